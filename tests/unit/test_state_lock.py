"""The state folder's lock: a second engine, demo or test session is refused at once, naming the
holder's pid; what the holder starts nests under it, and two nested ones still exclude each other."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.settings import load_settings
from fleetstream.state import StateBusy, exclusive_use

REPO = Path(__file__).resolve().parents[2]
HOLD = (
    "import sys, time\n"
    "from core.settings import load_settings\n"
    "from fleetstream.state import exclusive_use\n"
    "with exclusive_use(load_settings(state_dir=sys.argv[1]), sys.argv[2]):\n"
    "    print('held', flush=True)\n"
    "    time.sleep(60)\n"
)


def _holder(state: Path, what: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(state), what], cwd=REPO, stdout=subprocess.PIPE, text=True, env=env
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    return proc


def test_a_second_user_is_refused_at_once_naming_the_first(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    first = _holder(tmp_path, "fleetstream engine")
    try:
        began = time.monotonic()
        with pytest.raises(StateBusy, match=rf"in use by fleetstream engine \(pid {first.pid}, since"):
            with exclusive_use(settings, "fleetstream demo"):
                pass
        assert time.monotonic() - began < 1.0  # refused, not waited for
    finally:
        first.kill()
        first.wait()
    with exclusive_use(settings, "fleetstream demo"):  # the lock went with its process
        pass


def test_what_the_holder_starts_nests_and_nested_runs_exclude_each_other(tmp_path: Path) -> None:
    settings = load_settings(state_dir=tmp_path)
    outer = os.environ.get("FLEETSTREAM_STATE_HOLDER")  # the integration session's own, when the suite runs
    with exclusive_use(settings, "a test session"):
        env = dict(os.environ)  # FLEETSTREAM_STATE_HOLDER names this process now
        assert env["FLEETSTREAM_STATE_HOLDER"] == f"{os.getpid()}@{tmp_path.resolve()}"
        demo = _holder(tmp_path, "fleetstream demo", env)  # nested: not refused by the session
        try:
            second = subprocess.run(
                [sys.executable, "-c", HOLD, str(tmp_path), "fleetstream demo"],
                cwd=REPO,
                capture_output=True,
                text=True,
                env=env,
                timeout=60,
            )
            assert second.returncode != 0 and f"in use by fleetstream demo (pid {demo.pid}" in second.stderr
        finally:
            demo.kill()
            demo.wait()
    assert os.environ.get("FLEETSTREAM_STATE_HOLDER") == outer  # the holder before it, restored
