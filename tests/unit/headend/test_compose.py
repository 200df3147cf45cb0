"""docker-compose.yml is checked by schema here, since no Docker engine runs on CI."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from headend.cli import SERVICES
from headend.settings import CommonSettings

ROOT = Path(__file__).resolve().parents[3]


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def test_every_service_has_an_image_or_build_and_valid_dependencies() -> None:
    services = _compose()["services"]
    assert {"timescaledb", "mosquitto", "migrate", "api", "simulator"} <= set(services)
    for name, svc in services.items():
        assert ("image" in svc) != ("build" in svc), f"{name}: exactly one of image/build"
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, f"{name} depends on unknown service {dep}"
            assert cond["condition"] in {"service_started", "service_healthy", "service_completed_successfully"}
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"


def test_headend_services_run_real_cli_commands() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        if "build" not in svc:
            continue
        cmd = svc["command"]
        assert cmd[0] in {"migrate", "run", "simulate"}, name
        if cmd[0] == "run":
            assert cmd[1] in SERVICES, f"{name}: unknown service {cmd[1]}"
    assert {f"{s}" for s in SERVICES} <= {
        svc["command"][1] for svc in services.values() if "build" in svc and svc["command"][0] == "run"
    }


def test_environment_names_are_settings_and_files_exist() -> None:
    compose = _compose()
    known = {f"HEADEND_{f.upper()}" for f in CommonSettings.model_fields} | {"HEADEND_API_HOST", "HEADEND_API_PORT"}
    for name, svc in compose["services"].items():
        for key in svc.get("environment") or {}:
            if key.startswith("HEADEND_"):
                assert key in known, f"{name}: {key} is not a setting"
    assert "timescale/timescaledb" in compose["services"]["timescaledb"]["image"]
    assert (ROOT / "deploy" / "mosquitto.conf").is_file()
    assert (ROOT / "Dockerfile").is_file()
    for volume in compose["services"]["mosquitto"]["volumes"]:
        src = volume.split(":")[0]
        if src.startswith("./"):
            assert (ROOT / src).exists(), src
