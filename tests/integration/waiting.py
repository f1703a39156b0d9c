"""Polling for the integration tests: wait until something real has happened, or fail saying what."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

__all__ = ["wait_until"]


def wait_until(
    check: Callable[[], Any], timeout_s: float = 15.0, what: str = "condition", every_s: float = 0.05
) -> Any:
    """Call ``check`` every ``every_s`` seconds until it returns something truthy, and return that;
    AssertionError naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(every_s)
