"""The Raspberry Pi edge agent: sensors -> sampler -> durable outbox -> MQTT.

Depends only on the device contract (``core.contract``), ``edge.publisher``,
paho-mqtt and the standard library. Run it with ``fleetstream-edge --config FILE``.
"""
