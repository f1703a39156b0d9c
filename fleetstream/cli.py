"""The ``fleetstream`` command line."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import Any

from core.settings import Settings, load_settings

__all__ = ["main"]


def _services(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream import services

    if args.action == "up":
        services.up(settings)
    elif args.action == "down":
        services.down(settings)
    status = services.status(settings)
    print(json.dumps(status, indent=2, default=str))
    running = [s for s in ("postgres", "mosquitto") if status[s].get("running", not status[s]["embedded"])]
    if args.action != "down" and len(running) == 2:
        from fleetstream.connection import connection_commands, format_commands

        print(
            format_commands(
                connection_commands(settings, args.tenant or settings.tenant), args.tenant or settings.tenant
            )
        )
    return 0


def _db(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream import database
    from store.db import migrate

    if args.action == "migrate":
        applied = migrate(settings.dsn("migrate"))
        print("applied: " + (", ".join(applied) if applied else "nothing (schema is current)"))
    elif args.action == "readers":
        for row in database.readers(settings):
            print(json.dumps(row))
    else:
        if args.tenant is None:
            print("error: db reader needs TENANT", file=sys.stderr)
            return 2
        try:
            print(database.reader_dsn(settings, args.tenant, rotate=args.rotate))
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def _account(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream import credentials

    if args.action == "list":
        for row in credentials.tenant_accounts(settings, args.tenant):
            print(json.dumps(row))
        return 0
    if args.tenant is None or args.name is None:
        print(f"error: account {args.action} needs TENANT and NAME", file=sys.stderr)
        return 2
    try:
        if args.action == "remove":
            print(json.dumps({"removed": credentials.remove_account(settings, args.tenant, args.name, args.role)}))
            return 0
        username, password = credentials.add_account(settings, args.tenant, args.name, args.role, args.password)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(_account_facts(settings, username, password, args.tenant, args.role)))
    return 0


def _account_facts(settings: Settings, username: str, password: str, tenant: str, role: str) -> dict[str, Any]:
    """What a tenant account's holder needs: login, client id, what it may do, where to connect."""
    facts: dict[str, Any] = {"username": username, "password": password, "client_id": username, "role": role}
    if role == "manager":
        facts["subscribe"] = [f"{kind}/{tenant}/#" for kind in ("alerts", "stops", "etas")]
    else:
        facts["publish"] = f"dispatch/{tenant}/plan"
    facts.update(_where_to_connect(settings))
    return facts


def _device(settings: Settings, args: argparse.Namespace) -> int:
    from core.contract import device_username
    from fleetstream import credentials, trackers

    if args.action == "list":
        for row in trackers.trackers(settings, args.tenant):
            print(json.dumps(row))
        return 0
    if args.tenant is None or args.vehicle is None:
        print(f"error: device {args.action} needs TENANT and VEHICLE", file=sys.stderr)
        return 2
    if args.action == "remove":
        if args.protocol not in (None, "owntracks"):
            print("error: device remove takes MQTT accounts (the agent's, or --protocol owntracks)", file=sys.stderr)
            return 2
        owntracks = args.protocol == "owntracks"
        print(json.dumps({"removed": credentials.remove_device(settings, args.tenant, args.vehicle, owntracks)}))
        return 0
    if args.action == "cert":
        from pathlib import Path

        from fleetstream import tls

        cert = tls.issue_client_certificate(
            settings, device_username(args.tenant, args.vehicle), Path(args.out or ".").resolve()
        )
        print(json.dumps({"cert_file": str(cert.cert), "key_file": str(cert.key), "ca_file": str(cert.ca_cert)}))
        return 0
    if args.protocol is not None:
        try:
            doors = trackers.parse_door_inputs(args.door_input or [])
            added = trackers.add_tracker(
                settings, args.tenant, args.vehicle, args.protocol, args.imei, doors, args.password
            )
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps(added))
        return 0
    password = credentials.add_device(settings, args.tenant, args.vehicle, args.password)
    username = device_username(args.tenant, args.vehicle)
    facts: dict[str, Any] = {
        "username": username,
        "password": password,
        "client_id": username,
        "publish_to": f"fleet/{args.tenant}/{args.vehicle}/#",
    }
    facts.update(_where_to_connect(settings))
    print(json.dumps(facts))
    if settings.embedded_mqtt:
        print(
            "readings are stored while an engine runs (fleetstream engine); a Pi: fleetstream edge bundle "
            f"--tenant {args.tenant} --vehicle {args.vehicle}",
            file=sys.stderr,
        )
    return 0


def _where_to_connect(settings: Settings) -> dict[str, Any]:
    """The broker's TLS port and CA (the embedded broker's) and its plaintext address."""
    from fleetstream import tls

    host, port = settings.mqtt_endpoint()
    out: dict[str, Any] = {}
    if settings.embedded_mqtt and settings.mqtt_tls_port:
        out["tls"] = {"port": settings.mqtt_tls_port, "ca_file": str(tls.ca_file(settings))}
    out["plain"] = {"host": host, "port": port}
    return out


def _edge(settings: Settings, args: argparse.Namespace) -> int:
    from pathlib import Path

    from fleetstream.edge_bundle import build_bundle

    archive = build_bundle(settings, args.tenant, args.vehicle, Path(args.out).resolve(), args.host)
    name = archive.name.removesuffix(".tar.gz")
    print(f"{archive}")
    print(
        f"on the Pi (Debian 12 / Raspberry Pi OS, as root, no network needed):\n"
        f"  tar xzf {archive.name} && sh {name}/install.sh\n"
        f"or by hand: python3 -m venv venv && venv/bin/pip install --no-index --find-links {name}/wheels "
        f"fleetstream-edge && venv/bin/fleetstream-edge --config {name}/edge.toml --check",
        file=sys.stderr,
    )
    return 0


def _engine(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream.engine import run_engine

    run_engine(settings, with_flow=not args.no_flow)
    return 0


def _listen(settings: Settings, args: argparse.Namespace) -> int:
    from ingest import gt06, osmand, teltonika
    from ingest.listener import run_listener

    handlers = {"teltonika": teltonika.serve, "gt06": gt06.serve, "osmand": osmand.serve}
    run_listener(settings, args.protocol, handlers[args.protocol])
    return 0


def _gateway(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream.credentials import mqtt_account
    from ingest.gateway import run_gateway

    run_gateway(settings, args.shard, mqtt_account(settings, "gateway"))
    return 0


def _flow(settings: Settings, args: argparse.Namespace) -> int:
    """Run the dataflow until SIGINT or SIGTERM, which end it without a panic or traceback in its log.

    Bytewax ends a run on a signal by panicking in Rust (a backtrace on stderr) and raising
    ``BytewaxRuntimeError``. So the handler logs the stop, points stderr (fd 2: the engine's
    log file) at /dev/null while that unwinds, and raises ``KeyboardInterrupt`` (what Bytewax
    expects from a signal); stderr comes back for the closing line. Snapshots are unchanged:
    the next run resumes from the last completed epoch, as after any stop."""
    import signal

    from bytewax.errors import BytewaxRuntimeError

    from pipelines.run import run_flow

    log = logging.getLogger("fleetstream.flow")
    saved_stderr = os.dup(2)
    stopping: list[str] = []

    def stop(signum: int, _frame: object) -> None:
        if stopping:
            return
        stopping.append(signal.Signals(signum).name)
        log.info("flow: %s received; stopping", stopping[0])
        sys.stderr.flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 2)
        os.close(devnull)
        raise KeyboardInterrupt

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        resumed = None if args.resumed is None else args.resumed == "yes"
        run_flow(settings, args.process, resumed)
    except (KeyboardInterrupt, BytewaxRuntimeError):
        if not stopping:
            raise
    finally:
        os.dup2(saved_stderr, 2)
        os.close(saved_stderr)
    if stopping:
        log.info("flow: stopped (%s)", stopping[0])
    return 0


def _simulate(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream.demo import simulate

    summary = simulate(settings, batch=args.batch)
    print(json.dumps(summary, indent=2, default=str))
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream.demo import run_demo

    return run_demo(settings, batch=args.batch)


def _bench(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream.bench.analytics import run_analytics_benchmark
    from fleetstream.bench.ingest import run_benchmark

    if args.api:
        from fleetstream.bench.api import run_api_benchmark

        run_api_benchmark(settings, vehicles=args.vehicles or 1000, quick=args.quick)
        return 0
    if args.trackers:
        from fleetstream.bench.trackers import run_tracker_benchmark

        return run_tracker_benchmark(settings, trackers=args.trackers, quick=args.quick)
    if args.eta:
        from fleetstream.bench.eta import run_eta_benchmark

        return run_eta_benchmark(settings, vehicles=args.vehicles or 50, days=2 if args.quick else 7)
    if args.soak:
        import signal

        from fleetstream.bench.soak import run_soak

        # a soak run in the background (SIGINT ignored there) stops cleanly on SIGTERM too: engine, services
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

        vans, minutes = (
            (args.vans or 200, args.minutes or 1.5) if args.quick else (args.vans or 20_000, args.minutes or 10)
        )
        return 0 if run_soak(settings, vans=vans, minutes=minutes)["holds_p99_under_5_s"] else 1
    if args.eta_cost:
        from fleetstream.bench.eta_cost import run_eta_cost_benchmark

        result = run_eta_cost_benchmark(
            settings, vehicles=args.vehicles or (8 if args.quick else 20), days=1 if args.quick else 3
        )
        return 0 if result["eta_us_per_fix_with_model"] < 100 else 1
    if not args.analytics_only:
        run_benchmark(settings, readings=args.readings, quick=args.quick)
    run_analytics_benchmark(settings, vehicles=20 if args.quick else 100, hours=0.5 if args.quick else 2.0)
    return 0


def _plan(settings: Settings, args: argparse.Namespace) -> int:
    from core.plan import PlanError
    from store.db import connect
    from store.plans import latest_plan, load_plans_file, store_plan

    if args.action == "show":
        with connect(settings.dsn("migrate"), autocommit=True) as conn:
            plan = latest_plan(conn, args.tenant, args.vehicle)
        if plan is None:
            print(f"no plan stored for {args.tenant}/{args.vehicle}", file=sys.stderr)
            return 1
        print(json.dumps(plan.to_dict(), indent=2))
        return 0
    try:
        plans = load_plans_file(args.file)
    except (PlanError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.action == "load":
        limits = settings.plan_limits()
        for checked in plans:
            try:
                limits.check(checked)
            except PlanError as exc:
                print(f"error: {checked.tenant}/{checked.vehicle}: {exc}", file=sys.stderr)
                return 2
        with connect(settings.dsn("migrate"), autocommit=True) as conn:  # store_plan needs an idle connection
            for plan in plans:
                version, stored = store_plan(conn, plan, "cli", limits)
                print(
                    json.dumps({"tenant": plan.tenant, "vehicle": plan.vehicle, "version": version, "stored": stored})
                )
        return 0
    from fleetstream.credentials import mqtt_account
    from ingest.dispatch import PublishError, plan_topic, publish_plan

    for plan in plans:  # publish
        try:
            publish_plan(settings, plan, credentials=mqtt_account(settings, "dispatch"))
        except (PublishError, TimeoutError, OSError, ValueError) as exc:
            print(f"error: {plan.tenant}/{plan.vehicle}: {exc}", file=sys.stderr)
            return 1
        print(
            json.dumps(
                {"tenant": plan.tenant, "vehicle": plan.vehicle, "topic": plan_topic(plan.tenant), "acked": True}
            )
        )
    return 0


def _dispatch(settings: Settings, args: argparse.Namespace) -> int:
    from fleetstream.credentials import mqtt_account
    from ingest.dispatch import run_dispatch

    run_dispatch(settings, mqtt_account(settings, "gateway"))  # main thread: SIGTERM / SIGINT stop it
    return 0


def _deliver(settings: Settings, args: argparse.Namespace) -> int:
    from delivery.deliverer import run_delivery
    from fleetstream.credentials import mqtt_account

    run_delivery(
        settings, mqtt_account(settings, "alerts") if settings.alert_mqtt else None
    )  # main thread: SIGTERM / SIGINT stop it
    return 0


def _api(settings: Settings, args: argparse.Namespace) -> int:
    from api.server import run_api

    run_api(settings)
    return 0


def _token(settings: Settings, args: argparse.Namespace) -> int:
    from api.tokens import TokenError, add_token, list_tokens, revoke_token
    from store.db import connect

    with connect(settings.dsn("migrate"), autocommit=True) as conn:
        try:
            if args.action == "add":
                token, token_id = add_token(conn, args.tenant, args.role, args.name or "")
                print(json.dumps({"token": token, "id": token_id, "tenant": args.tenant, "role": args.role}))
                print(f"page: {settings.api_url()}/?token={token}", file=sys.stderr)
            elif args.action == "revoke":
                print(json.dumps({"revoked": revoke_token(conn, args.token)}))
            else:
                for row in list_tokens(conn, args.tenant):
                    print(json.dumps(row))
        except TokenError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    return 0


def _evaluate(settings: Settings, args: argparse.Namespace) -> int:

    from fleetstream.evaluate import run_evaluations, scenario_settings

    if args.eta:
        from fleetstream.eta_evaluation import run_eta_evaluation

        _, eta_missed = run_eta_evaluation(settings, vehicles=args.vehicles, days=args.days, scenario=args.scenario)
        return 1 if eta_missed else 0
    if args.traces:
        from fleetstream.trace_evaluation import run_trace_evaluation

        _, trace_missed = run_trace_evaluation(settings)
        return 1 if trace_missed else 0
    chosen = scenario_settings(
        settings,
        args.scenario,
        sim_vehicles=args.vehicles,
        sim_minutes=args.minutes,
        sim_speedup=args.speedup,
        sim_anomaly_probability=args.probability,
    )
    try:
        seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else [settings.sim_seed]
    except ValueError:
        raise _UsageError(f"--seeds: {args.seeds!r} is not a comma-separated list of integers") from None
    from fleetstream.state import exclusive_use

    with exclusive_use(chosen, "fleetstream evaluate"):
        _, missed = run_evaluations(chosen, args.scenario, seeds, args.repeats)
    return 1 if missed else 0


def _train(settings: Settings, args: argparse.Namespace) -> int:
    from store.db import connect

    if args.model == "dwell":
        from training.dwell import train_dwell_baselines

        with connect(settings.dsn(), autocommit=True) as conn:
            result = train_dwell_baselines(conn, settings.baseline_min_samples)
        print(json.dumps(result))
        return 0
    if args.model == "eta":
        from datetime import datetime

        from fleetstream.train_eta import run_train_eta

        def when(text: str | None) -> datetime | None:
            if text is None:
                return None
            try:
                value = datetime.fromisoformat(text)
            except ValueError:
                raise SystemExit(f"--since/--until: {text!r} is not an ISO time") from None
            if value.tzinfo is None:
                raise SystemExit(f"--since/--until need a time zone, e.g. 2026-11-23T00:00+00:00 (got {text})")
            return value

        code, _ = run_train_eta(settings, args.tenant, when(args.since), when(args.until))
        return code
    raise SystemExit(f"unknown model {args.model!r}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fleetstream", description=__doc__, formatter_class=_Help)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks of errors")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("services", help="start, stop or show the embedded Mosquitto and TimescaleDB")
    p.add_argument("action", choices=["up", "down", "status"])
    p.add_argument("--tenant", help="whose connection commands to print (default: settings.tenant, demo)")
    p.set_defaults(func=_services)

    p = sub.add_parser(
        "db", help="database schema (migrate); a tenant's read-only login (reader TENANT prints its DSN); readers"
    )
    p.add_argument("action", choices=["migrate", "reader", "readers"])
    p.add_argument("tenant", nargs="?")
    p.add_argument("--rotate", action="store_true", help="reader: a new password (the old one stops working)")
    p.set_defaults(func=_db)

    p = sub.add_parser(
        "account",
        help="MQTT accounts of a tenant: a manager reads its alerts, stops and ETAs; a dispatcher publishes its plans",
    )
    p.add_argument("action", choices=["add", "remove", "list"])
    p.add_argument("tenant", nargs="?")
    p.add_argument("name", nargs="?")
    p.add_argument("--role", choices=["manager", "dispatcher"], default="manager")
    p.add_argument("--password", help="default: a generated one (printed)")
    p.set_defaults(func=_account)

    p = sub.add_parser(
        "device",
        help="provision a device: an MQTT account (the edge agent, OwnTracks) or a tracker identity; remove one; "
        "issue its TLS client certificate (cert); list trackers",
    )
    p.add_argument("action", choices=["add", "remove", "cert", "list"])
    p.add_argument("tenant", nargs="?")
    p.add_argument("vehicle", nargs="?")
    p.add_argument("--password", help="default: a generated one (printed)")
    p.add_argument("--out", help="cert: the folder for the device's certificate, key and the CA (default: here)")
    p.add_argument(
        "--protocol",
        choices=["teltonika", "gt06", "osmand", "owntracks"],
        help="a tracker instead of the edge agent: its data is stored for VEHICLE (docs/trackers.md)",
    )
    p.add_argument("--imei", help="the tracker's IMEI (teltonika, gt06) or the phone's device id (osmand)")
    p.add_argument(
        "--door-input",
        action="append",
        metavar="INPUT=DOOR",
        help="teltonika: a digital input that is a door, e.g. 1=rear (repeatable)",
    )
    p.set_defaults(func=_device)

    p = sub.add_parser(
        "edge",
        help="the edge agent for a vehicle's Raspberry Pi: bundle writes one archive to install it offline",
        description="bundle: provision TENANT/VEHICLE's device account and write fleetstream-edge-T-V.tar.gz: "
        "wheels of the agent and of paho-mqtt (pip install --no-index), edge.toml filled in (the broker's "
        "address and TLS port, its CA, a password file), the systemd unit and install.sh",
        epilog="example: fleetstream edge bundle --tenant demo --vehicle van-007 --out /tmp/bundle",
    )
    p.add_argument("action", choices=["bundle"])
    p.add_argument("--tenant", required=True)
    p.add_argument("--vehicle", required=True)
    p.add_argument("--out", default=".", help="the folder for the archive (default: here)")
    p.add_argument(
        "--host",
        help="the broker's address as the van reaches it (default: the first mqtt_also_listen address, "
        "else mqtt_host); the broker's certificate must name it",
    )
    p.set_defaults(func=_edge)

    p = sub.add_parser(
        "engine",
        help="run the engine in the foreground: gateway shards, tracker listeners, the dataflow, dispatch, "
        "delivery and the API, each restarted when it dies; refused while another engine, demo or test "
        "session uses the state folder",
    )
    p.add_argument("--no-flow", action="store_true", help="gateway only")
    p.set_defaults(func=_engine)

    p = sub.add_parser("listen", help="run one tracker listener (the engine starts these)")
    p.add_argument("protocol", choices=["teltonika", "gt06", "osmand"])
    p.set_defaults(func=_listen)

    p = sub.add_parser("gateway", help="run one gateway shard (the engine starts these)")
    p.add_argument("--shard", type=int, required=True)
    p.set_defaults(func=_gateway)

    p = sub.add_parser("flow", help="run the dataflow (the engine starts it)")
    p.add_argument(
        "--process",
        type=int,
        default=0,
        help="this process's place in the dataflow's cluster (flow_processes, flow_addresses; default: 0)",
    )
    p.add_argument(
        "--resumed",
        choices=("yes", "no"),
        help="whether the run resumes an earlier one on the recovery store, as decided for the whole "
        "cluster by whoever created the store (default: process 0 decides; the others wait for it)",
    )
    p.set_defaults(func=_flow)

    for name, func, text in (
        (
            "simulate",
            _simulate,
            "publish a simulated fleet to the broker (a running engine stores it); each run drives fresh "
            "vehicle ids r<n>-veh-001 ... (sim_fresh_ids)",
        ),
        (
            "demo",
            _demo,
            "services + engine + simulated fleet, with live progress, a summary from TimescaleDB and the "
            "commands to connect; fresh vehicle ids each run; refused while another demo, engine or test "
            "session uses the state folder",
        ),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("--vehicles", type=int, help="default: settings.sim_vehicles (50)")
        p.add_argument("--minutes", type=float, help="wall-clock minutes (default: settings.sim_minutes, 3)")
        p.add_argument(
            "--speedup", type=float, help="simulated seconds per wall second (default: settings.sim_speedup, 10)"
        )
        p.add_argument("--seed", type=int, help="same seed, same fleet (default: settings.sim_seed, 7)")
        p.add_argument(
            "--protocol",
            help="comma-separated tracker protocols (teltonika, gt06, osmand, owntracks) that some vans speak "
            "instead of the edge agent's contract (default: settings.sim_protocols, none)",
        )
        p.add_argument(
            "--protocol-share",
            type=float,
            help="share of the vans that are trackers (default: settings.sim_protocol_share)",
        )
        p.add_argument(
            "--batch",
            action="store_true",
            help="shared-account path only (external broker): batch messages; "
            "simulated vans with their own accounts always send batches, like the edge agent",
        )
        p.set_defaults(func=func)

    p = sub.add_parser("bench", help="ingest benchmark with references measured in the same run")
    p.add_argument("--readings", type=int, default=100_000, help="backlog size for the drain tests")
    p.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    p.add_argument("--analytics-only", action="store_true", help="only the analytics benchmark")
    p.add_argument(
        "--eta",
        action="store_true",
        help="only the ETA training benchmark: a simulated week of "
        "--vehicles vans (default 50) into TimescaleDB, then `train eta` timed",
    )
    p.add_argument(
        "--eta-cost",
        action="store_true",
        help="only the ETA cost per fix with the trained model loaded, on sparse simulated days (in process)",
    )
    p.add_argument(
        "--api",
        action="store_true",
        help="only the API benchmark: request latency with --vehicles vans (default 1000), the stored-readings "
        "rate with and without 50 live-stream clients, and live-stream capacity",
    )
    p.add_argument(
        "--soak",
        action="store_true",
        help="only the soak: --vans vans (default 20000; --quick 200) with plans, a fix every 5 s plus reefer and "
        "doors, live for --minutes (default 10; --quick 1.5), every tracker and live ETAs on: lag p50/p99, "
        "timers, CPU, memory",
    )
    p.add_argument("--vans", type=int, help="with --soak: the fleet size (default 20000)")
    p.add_argument("--minutes", type=float, help="with --soak: how long the fleet reports (default 10)")
    p.add_argument("--vehicles", type=int, help="with --eta: vans in the simulated week (default 50); with --api: 1000")
    p.add_argument(
        "--trackers",
        type=int,
        nargs="?",
        const=1000,
        help="only the tracker load: N concurrent Teltonika trackers over TCP loopback (default 1000), "
        "each 10 packets of 5 records, beside the MQTT path with the same readings",
    )
    p.set_defaults(func=_bench)

    p = sub.add_parser("plan", help="delivery plans: store, publish over MQTT, show the latest")
    plan_sub = p.add_subparsers(dest="action", required=True)
    q = plan_sub.add_parser("load", help="store every plan in FILE; prints the assigned versions")
    q.add_argument("file")
    q = plan_sub.add_parser("publish", help="publish every plan in FILE to dispatch/<tenant>/plan (waits for PUBACK)")
    q.add_argument("file")
    q = plan_sub.add_parser("show", help="print a vehicle's latest stored plan")
    q.add_argument("tenant")
    q.add_argument("vehicle")
    p.set_defaults(func=_plan)

    p = sub.add_parser("dispatch", help="run the dispatch listener for plans over MQTT (the engine starts it)")
    p.set_defaults(func=_dispatch)

    p = sub.add_parser("deliver", help="deliver alerts and stop events to MQTT and webhooks (the engine starts it)")
    p.set_defaults(func=_deliver)

    p = sub.add_parser(
        "api",
        help="serve the HTTP API, live stream, metrics and control-tower page on api_host:api_port "
        "(the engine starts it; alone: e.g. beside an engine on another machine)",
    )
    p.set_defaults(func=_api)

    p = sub.add_parser("token", help="bearer tokens of the HTTP API: add, revoke, list")
    token_sub = p.add_subparsers(dest="action", required=True)
    q = token_sub.add_parser("add", help="print a new token for TENANT (shown once; stored hashed)")
    q.add_argument("tenant")
    q.add_argument("--role", choices=["viewer", "dispatcher"], default="viewer", help="default viewer (read only)")
    q.add_argument("--name", help="who holds it: names the actor of alert actions")
    q = token_sub.add_parser("revoke", help="revoke a token, given by its id or the token itself")
    q.add_argument("token")
    q = token_sub.add_parser("list", help="the tokens (ids, never the tokens), of TENANT or all")
    q.add_argument("tenant", nargs="?")
    p.set_defaults(func=_token)

    p = sub.add_parser(
        "evaluate",
        help="simulated fleet with labelled anomalies through the real engine: "
        "precision, recall, detection delay, arrival/departure timing",
    )
    p.add_argument("--vehicles", type=int, help="default 100")
    p.add_argument("--minutes", type=float, help="wall-clock minutes (default 6)")
    p.add_argument("--speedup", type=float, help="simulated seconds per wall second (default 20)")
    p.add_argument("--probability", type=float, help="chance per van of each anomaly (default 0.5)")
    p.add_argument("--seed", type=int)
    p.add_argument(
        "--eta",
        action="store_true",
        help="instead: ETA accuracy (MAE, MAPE at 5/15/30 min before "
        "arrival) of the trained model, the speed profiles alone and the naive baseline, on simulated "
        "days (in process; --vehicles default settings.eta_eval_vehicles)",
    )
    p.add_argument("--days", type=int, help="with --eta: training days (default settings.eta_eval_days)")
    p.add_argument(
        "--scenario",
        default="default",
        choices=["default", "sparse", "bus"],
        help="the simulated fleet: default (a fix every 5 s), sparse (every 30 s with jitter, no device speed, "
        "tunnels and dead zones, shifts ending at the depot), bus (stops 80-150 m apart, pass-throughs)",
    )
    p.add_argument("--seeds", help="comma-separated seeds, each run in turn (default: --seed / settings.sim_seed)")
    p.add_argument("--repeats", type=int, default=1, help="runs per seed (the worst of all is reported)")
    p.add_argument(
        "--traces",
        action="store_true",
        help="instead: real dense GPS traces (fetched from Debian source packages) subsampled to 5/15/30/60 s "
        "through the trackers: arrivals, dwell and false alerts against the dense truth",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser("train", help="learn a model from the history in TimescaleDB")
    p.add_argument(
        "model",
        choices=["dwell", "eta"],
        help="dwell: per-H3-cell, hour-of-week dwell baselines; "
        "eta: speed profiles, detour factor and ETA model, saved under <state_dir>/models/eta",
    )
    p.add_argument("--tenant", help="eta: whose history (default settings.tenant)")
    p.add_argument("--since", help="eta: arrivals from this ISO time (with zone); default: all history")
    p.add_argument("--until", help="eta: arrivals before this ISO time (with zone)")
    p.set_defaults(func=_train)

    _document(parser, sub)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    overrides = {
        "sim_vehicles": getattr(args, "vehicles", None),
        "sim_minutes": getattr(args, "minutes", None),
        "sim_speedup": getattr(args, "speedup", None),
        "sim_seed": getattr(args, "seed", None),
        "sim_protocols": getattr(args, "protocol", None),
        "sim_protocol_share": getattr(args, "protocol_share", None),
    }
    from core.settings import SettingsError
    from fleetstream.credentials import CredentialsError
    from fleetstream.state import StateBusy

    try:
        settings = load_settings(**overrides)
        if args.command in _ENGINE_PROCESSES:
            _metrics_dir(settings)
        return int(args.func(settings, args) or 0)
    except (SettingsError, _UsageError) as exc:  # a bad argument or setting: one line, no traceback
        print(f"fleetstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except StateBusy as exc:
        print(f"fleetstream {args.command}: refused: {exc}", file=sys.stderr)
        return 1
    except CredentialsError as exc:  # e.g. the broker is down: say so and how to start it
        print(f"fleetstream {args.command}: error: {exc} (is it running? fleetstream services status)", file=sys.stderr)
        return 1
    except ValueError as exc:  # what a command refuses (an invalid id, a bad file): -v shows where
        if args.verbose:
            raise
        print(f"fleetstream {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before a command installed its own handler
        print(f"fleetstream {args.command}: interrupted", file=sys.stderr)
        return 130


class _UsageError(ValueError):
    """A bad command-line argument the parser could not catch; the message says what to give."""


# one example per command, shown under its --help (a test checks that every command has one)
EXAMPLES = {
    "services": "fleetstream services status --tenant demo   # where they listen, and the commands to connect",
    "db": "psql \"$(fleetstream db reader demo)\" -c 'SELECT * FROM vehicle_current LIMIT 5'",
    "account": "fleetstream account add demo alice --role manager   # prints its password and topics",
    "device": "fleetstream device add demo van-007   # prints the device's username, password and topics",
    "edge": "fleetstream edge bundle --tenant demo --vehicle van-007 --out /tmp/bundle",
    "engine": "fleetstream engine   # until Ctrl-C; logs in <state_dir>/logs",
    "listen": "fleetstream listen teltonika   # on teltonika_port (5027)",
    "gateway": "fleetstream gateway --shard 0",
    "flow": "fleetstream flow",
    "simulate": "fleetstream simulate --vehicles 10 --minutes 1   # beside a running engine",
    "demo": "fleetstream demo --vehicles 10 --minutes 1",
    "bench": "fleetstream bench --quick",
    "plan": "fleetstream plan publish plans.json && fleetstream plan show demo van-007",
    "dispatch": "fleetstream dispatch",
    "deliver": "fleetstream deliver",
    "api": "fleetstream api   # http://127.0.0.1:18880/?token=... (fleetstream token add demo)",
    "token": "fleetstream token add demo --role dispatcher --name alice",
    "evaluate": "fleetstream evaluate --scenario sparse --vehicles 20 --minutes 2",
    "train": "fleetstream train eta --tenant demo",
}


class _Help(argparse.RawDescriptionHelpFormatter):
    """Shows an option's default when its help does not already say it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        if action.option_strings and action.default not in (None, False, argparse.SUPPRESS) and "default" not in text:
            text += " (default: %(default)s)"
        return text


def _document(parser: argparse.ArgumentParser, sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Every command's --help: what it does (its one-line help), its options' defaults, an example."""
    said = {a.dest: a.help or "" for a in sub._choices_actions}
    for name, command in sub.choices.items():
        command.formatter_class = _Help
        command.description = command.description or said.get(name, "")
        command.epilog = f"example:\n  {EXAMPLES[name]}"
        for action in command._actions:  # nested commands (plan load, token add, ...)
            if isinstance(action, argparse._SubParsersAction):
                nested = {a.dest: a.help or "" for a in action._choices_actions}
                for child_name, child in action.choices.items():
                    child.formatter_class = _Help
                    child.description = child.description or nested.get(child_name, "")
                    child.epilog = f"example:\n  {EXAMPLES[name]}"
    parser.epilog = (
        "how to call it: .venv/bin/fleetstream, or ./run fleetstream (sets up first); COMMAND --help for more"
    )


# the commands the engine runs: they report Prometheus metrics to <state_dir>/metrics
_ENGINE_PROCESSES = ("gateway", "flow", "dispatch", "deliver", "api")


def _metrics_dir(settings: Settings) -> None:
    """Point prometheus-client's multiprocess mode at the engine's metrics folder (unless the
    environment already names one), before anything imports it (``core/metrics.py``)."""
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(settings.metrics_dir)
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)


if __name__ == "__main__":
    sys.exit(main())
