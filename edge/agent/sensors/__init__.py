"""Sensors of the edge agent, each with a fake twin for tests and demos.

Every source has ``run(emit, stop)`` (blocks until the ``threading.Event`` is set,
calling ``emit(sample)`` per sample) and ``faults() -> dict[str, int]``.
"""
