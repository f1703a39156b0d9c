"""``fleetstream-edge --config FILE``: run the edge agent until SIGTERM / Ctrl-C.

Exit codes: 0 stopped cleanly, 1 a worker died (systemd restarts the agent),
2 the configuration or a sensor cannot be used (the message says why).
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from pathlib import Path

from edge.agent.agent import Agent
from edge.agent.config import ConfigError, load_config
from edge.agent.outbox import OutboxError
from edge.agent.sensors.door import DoorSensorError

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="fleetstream-edge", description="fleetstream edge agent: sensors -> durable outbox -> MQTT"
    )
    parser.add_argument("--config", required=True, type=Path, help="the agent's TOML file")
    parser.add_argument(
        "--check",
        action="store_true",
        help="check the set-up and exit: the config, the broker (reached, the login accepted, TLS verified), "
        "gpsd, the 1-Wire probes and the GPIO door lines; each failure says what to fix (exit 2)",
    )
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"fleetstream-edge: {exc}", file=sys.stderr)
        return 2
    if args.check:
        from edge.agent.check import check_all, format_findings

        print(f"ok   config: {args.config} ({config.device.tenant}/{config.device.vehicle})")
        findings = check_all(config)
        print(format_findings(findings))
        failed = [f.name for f in findings if not f.ok]
        print(f"fleetstream-edge: {'ready' if not failed else 'not ready: ' + ', '.join(failed)}")
        return 2 if failed else 0
    logging.basicConfig(
        level=config.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    try:
        agent = Agent(config)
    except (DoorSensorError, OutboxError) as exc:
        logging.getLogger("fleetstream.edge").error("%s", exc)
        return 2
    return agent.run(stop)


if __name__ == "__main__":
    sys.exit(main())
