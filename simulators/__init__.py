"""Simulated meters: a fleet of MQTT and Modbus TCP meters with relays, load profiles and faults.

Pure core: ``meter`` (relay table, decisions), ``profiles`` (BDEW shapes), ``fleet`` (state of
N meters in arrays), ``clock`` (ticks), ``faults``, ``formats`` (wire payloads),
``registermaps`` (SunSpec, SDM630), ``driver`` (what every meter sends per tick), ``scenario``.
Shell: ``mqtt`` (shared paho clients), ``modbus`` (pymodbus servers), ``runner``
(``Simulation``, the library the demo drives), ``registration``, ``cli`` (``headend simulate``).
See docs/simulators.md.
"""
