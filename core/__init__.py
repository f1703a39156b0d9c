"""The kernel every other package builds on: the device contract, the plan model,
geometry, the analytics thresholds and the settings.

``core`` imports no other project package. ``core.contract`` uses only the standard
library, so the edge agent can import it on a Raspberry Pi without server dependencies.
Import the modules directly (``from core.contract import decode``); this package
imports nothing on purpose.
"""
