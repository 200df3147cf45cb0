"""ingest: MQTT and Modbus collectors that lose nothing and count nothing twice.

Pure core: ``decode`` (native v1), ``tasmota``, ``shelly`` (device adapters),
``registers_sunspec`` / ``registers_sdm`` (Modbus maps as data), ``validation``
(future timestamps, rollover/reset/spike, gaps). Shell: ``store`` (the batch
writer), ``mqtt`` (paho adapter), ``modbus`` (pymodbus poller), ``service``.
"""
