"""ingest: MQTT and Modbus collectors that lose nothing and count nothing twice.

Pure core: ``decode`` (native v1, routing), ``tasmota`` and ``shelly`` (device
adapters), ``dispatch`` (topic + payload -> item), ``registers_sunspec`` /
``registers_sdm`` (Modbus maps as data) and ``validation`` (future timestamps,
rollover / reset / spike, gaps). Shell: ``store`` (the batch writer), ``mqtt``
(paho adapter), ``modbus`` (pymodbus poller), ``service`` (``serve_mqtt``,
``serve_modbus``) and ``cli`` (``headend quarantine``). See docs/ingest.md.
"""
