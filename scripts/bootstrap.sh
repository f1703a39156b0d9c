#!/usr/bin/env bash
# Set up a fresh Debian 12 machine for fleetstream (run as root).
#
#   1. apt packages: Mosquitto, PostgreSQL 15 (+ server headers), build tools, Chromium
#   2. TimescaleDB (Apache-2 edition) built from Debian trixie's source package
#   3. Mosquitto 2.1 built from Debian sid's source package (its persist-sqlite plugin keeps
#      shared subscriptions across a restart: docs/operations.md, "Failure behaviour")
#   4. the Python virtualenv at .venv with the project installed editable; .venv/opt/mosquitto
#      points at the broker of step 3
#   5. the control-tower page's npm packages (api/web/package.json) in .web/ (never committed)
#
# Every step is skipped when it is already done, so a second run takes seconds.
# Prints one line per step. Works without a terminal (CI=true, no stdin).
#
# Environment:
#   FLEETSTREAM_CACHE_DIR   downloads and build trees (default /var/cache/fleetstream)
#   FLEETSTREAM_PG_MAJOR    PostgreSQL major version (default 15)
#   PYTHON                  interpreter for the venv (default: python3 on PATH)
set -euo pipefail
exec </dev/null

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE_DIR="${FLEETSTREAM_CACHE_DIR:-/var/cache/fleetstream}"
PG_MAJOR="${FLEETSTREAM_PG_MAJOR:-15}"
PYTHON="${PYTHON:-python3}"
TSDB_WANTED="2.19.3"
export DEBIAN_FRONTEND=noninteractive

LOG_DIR="$CACHE_DIR/logs"
mkdir -p "$LOG_DIR"

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# run_logged LOGFILE CMD...: run quietly; on failure show the end of the log and stop
run_logged() {
    local log="$1"
    shift
    if ! "$@" >>"$log" 2>&1; then
        echo "FAILED: $* (last lines of $log follow)" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap.sh must run as root" >&2
    exit 1
fi

# ------------------------------------------------------------------ 1. apt
APT_PACKAGES=(
    mosquitto mosquitto-clients
    "postgresql-$PG_MAJOR" "postgresql-client-$PG_MAJOR" "postgresql-server-dev-$PG_MAJOR"
    cmake gcc g++ make dpkg-dev xz-utils
    libcjson-dev uthash-dev libsqlite3-dev libargon2-dev # Mosquitto 2.1: JSON, hashes, persist-sqlite, argon2id
    libkrb5-dev libssl-dev # Debian's PostgreSQL is built with GSSAPI + OpenSSL: their headers are needed
    gpsd gpsd-clients      # the edge agent's GPS tests run a real gpsd fed by gpsfake
    chromium               # the control-tower page's browser tests (Playwright drives it; no browser download)
)
# a Debian python3 needs python3-venv for "python3 -m venv"
if ! "$PYTHON" -c 'import ensurepip' >/dev/null 2>&1; then
    APT_PACKAGES+=(python3-venv)
fi

missing_packages() {
    local p status
    for p in "${APT_PACKAGES[@]}"; do
        status="$(dpkg-query -W -f='${db:Status-Status}' "$p" 2>/dev/null || true)"
        if [ "$status" != "installed" ]; then
            echo "$p"
        fi
    done
}

t0="$(now)"
mapfile -t MISSING < <(missing_packages)
if [ "${#MISSING[@]}" -eq 0 ]; then
    echo "apt: ok (cached)"
else
    # Package installs must not start system daemons: our project-local Mosquitto and
    # PostgreSQL own their ports. policy-rc.d exit code 101 = "action forbidden".
    POLICY=/usr/sbin/policy-rc.d
    if [ ! -e "$POLICY" ]; then
        printf '#!/bin/sh\n# temporary, written by fleetstream bootstrap.sh\nexit 101\n' >"$POLICY"
        chmod 755 "$POLICY"
        trap 'rm -f "$POLICY"' EXIT
    fi
    APT_LOG="$LOG_DIR/apt.log"
    : >"$APT_LOG"
    run_logged "$APT_LOG" apt-get -q update
    run_logged "$APT_LOG" apt-get -q -y --no-install-recommends install "${MISSING[@]}"
    # Belt and braces on hosts where policy-rc.d is not honoured: stop what these
    # installs may have started (only for packages installed just now).
    case " ${MISSING[*]} " in
    *" mosquitto "*)
        if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
            systemctl stop mosquitto.service >/dev/null 2>&1 || true
        fi
        ;;
    esac
    case " ${MISSING[*]} " in
    *" postgresql-$PG_MAJOR "*)
        if [ -x /usr/bin/pg_ctlcluster ] && pg_ctlcluster "$PG_MAJOR" main status >/dev/null 2>&1; then
            pg_ctlcluster "$PG_MAJOR" main stop >/dev/null 2>&1 || true
        fi
        ;;
    esac
    echo "apt: installed ${MISSING[*]} in $(elapsed "$t0") s"
fi

# ------------------------------------------------------------------ 2. TimescaleDB
PG_CONFIG="/usr/lib/postgresql/$PG_MAJOR/bin/pg_config"
PKGLIBDIR="$("$PG_CONFIG" --pkglibdir)"
EXTDIR="$("$PG_CONFIG" --sharedir)/extension"
CONTROL="$EXTDIR/timescaledb.control"

installed_tsdb_version() {
    # prints the default_version of the installed extension when its library is present too
    [ -f "$CONTROL" ] || return 1
    local v
    v="$(sed -n "s/^default_version *= *'\([^']*\)'.*/\1/p" "$CONTROL")"
    [ -n "$v" ] && [ -f "$PKGLIBDIR/timescaledb-$v.so" ] && [ -f "$PKGLIBDIR/timescaledb.so" ] || return 1
    echo "$v"
}

debian_mirror_uri() {
    # the machine's own main Debian archive URI (deb822 first, then one-line format)
    local uri=""
    if [ -f /etc/apt/sources.list.d/debian.sources ]; then
        uri="$(awk '
            BEGIN { RS = ""; FS = "\n" }
            {
                u = ""; s = ""
                for (i = 1; i <= NF; i++) {
                    if ($i ~ /^URIs:/)   { split($i, a, /[ \t]+/); u = a[2] }
                    if ($i ~ /^Suites:/) { s = $i }
                }
                if (u != "" && s !~ /security/) { print u; exit }
            }' /etc/apt/sources.list.d/debian.sources)"
    fi
    if [ -z "$uri" ] && [ -f /etc/apt/sources.list ]; then
        uri="$(awk '$1 == "deb" && $0 !~ /security/ { for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:\/\//) { print $i; exit } }' /etc/apt/sources.list)"
    fi
    [ -n "$uri" ] || return 1
    echo "$uri"
}

t0="$(now)"
if v="$(installed_tsdb_version)"; then
    echo "timescaledb: ok ($v cached)"
else
    TS_LOG="$LOG_DIR/timescaledb.log"
    : >"$TS_LOG"
    APT_PRIV="$CACHE_DIR/apt"
    SRC_DIR="$CACHE_DIR/src"
    mkdir -p "$APT_PRIV/lists/partial" "$APT_PRIV/cache/archives/partial" "$SRC_DIR"
    if ! ls "$SRC_DIR"/timescaledb_*.dsc >/dev/null 2>&1; then
        MIRROR="$(debian_mirror_uri)" || {
            echo "timescaledb: cannot find the Debian archive URI in /etc/apt/sources.list.d/debian.sources" >&2
            exit 1
        }
        KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
        echo "deb-src [signed-by=$KEYRING] $MIRROR trixie main" >"$APT_PRIV/sources.list"
        APT_OPTS=(
            -o "Dir::Etc::SourceList=$APT_PRIV/sources.list"
            -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$APT_PRIV/lists"
            -o "Dir::Cache=$APT_PRIV/cache" # keep the system's package caches untouched
        )
        run_logged "$TS_LOG" apt-get -q "${APT_OPTS[@]}" update
        (cd "$SRC_DIR" && run_logged "$TS_LOG" apt-get -q "${APT_OPTS[@]}" source --download-only timescaledb)
    fi
    DSC="$(ls -1 "$SRC_DIR"/timescaledb_*.dsc | sort -V | tail -n 1)"
    SRC_VERSION="$(sed -n 's/^Version: *//p' "$DSC" | head -n 1)"
    UPSTREAM="${SRC_VERSION%%+*}"
    UPSTREAM="${UPSTREAM%%-*}"
    if [ "$UPSTREAM" != "$TSDB_WANTED" ]; then
        echo "timescaledb: note: trixie has $SRC_VERSION (wanted $TSDB_WANTED); building that"
    fi
    TREE="$CACHE_DIR/build/timescaledb-$SRC_VERSION"
    if [ ! -f "$TREE/CMakeLists.txt" ]; then
        rm -rf "$TREE"
        mkdir -p "$CACHE_DIR/build"
        run_logged "$TS_LOG" dpkg-source -x "$DSC" "$TREE"
    fi
    run_logged "$TS_LOG" cmake -S "$TREE" -B "$TREE/build" \
        -DPG_CONFIG="$PG_CONFIG" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DAPACHE_ONLY=1 -DREGRESS_CHECKS=OFF -DTAP_CHECKS=OFF \
        -DSEND_TELEMETRY_DEFAULT=OFF -DUSE_TELEMETRY=OFF
    run_logged "$TS_LOG" make -C "$TREE/build" -j"$(nproc)"
    run_logged "$TS_LOG" make -C "$TREE/build" install
    v="$(installed_tsdb_version)" || {
        echo "timescaledb: build finished but $CONTROL / its library are missing (see $TS_LOG)" >&2
        exit 1
    }
    echo "timescaledb: built $v ($SRC_VERSION) in $(elapsed "$t0") s"
fi

# ------------------------------------------------------------------ 3. Mosquitto 2.1
# Debian 12's Mosquitto (2.0.11, as 2.0.21) does not save shared subscriptions: after a restart
# it queues nothing for the gateway's restored sessions until each shard subscribes again, and
# answers devices with PUBACK 0x10. 2.1's persist-sqlite plugin saves and restores them. Built
# into a prefix of its own under the cache folder (the system's mosquitto stays as it is).
MOSQ_WANTED="2.1.2"
MOSQ_PREFIX="$CACHE_DIR/mosquitto/$MOSQ_WANTED"
t0="$(now)"
if [ -x "$MOSQ_PREFIX/sbin/mosquitto" ] && [ -f "$MOSQ_PREFIX/lib/mosquitto_persist_sqlite.so" ] &&
    [ -f "$MOSQ_PREFIX/share/mosquitto/migrate_to_persist_sqlite.py" ]; then
    echo "mosquitto: ok ($MOSQ_WANTED cached)"
else
    MQ_LOG="$LOG_DIR/mosquitto.log"
    : >"$MQ_LOG"
    APT_SID="$CACHE_DIR/apt-sid"
    SRC_DIR="$CACHE_DIR/src"
    mkdir -p "$APT_SID/lists/partial" "$APT_SID/cache/archives/partial" "$SRC_DIR"
    if ! ls "$SRC_DIR"/mosquitto_"$MOSQ_WANTED"-*.dsc >/dev/null 2>&1; then
        MIRROR="$(debian_mirror_uri)" || {
            echo "mosquitto: cannot find the Debian archive URI in /etc/apt/sources.list.d/debian.sources" >&2
            exit 1
        }
        KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg
        echo "deb-src [signed-by=$KEYRING] $MIRROR sid main" >"$APT_SID/sources.list"
        APT_OPTS=(
            -o "Dir::Etc::SourceList=$APT_SID/sources.list"
            -o "Dir::Etc::SourceParts=/dev/null"
            -o "Dir::State::Lists=$APT_SID/lists"
            -o "Dir::Cache=$APT_SID/cache"
        )
        run_logged "$MQ_LOG" apt-get -q "${APT_OPTS[@]}" update
        SID_VERSION="$(apt-cache "${APT_OPTS[@]}" showsrc mosquitto | sed -n 's/^Version: *//p' | sort -V | tail -n 1)"
        case "$SID_VERSION" in
        "$MOSQ_WANTED"-*) ;;
        *)
            echo "mosquitto: sid has ${SID_VERSION:-nothing}, not $MOSQ_WANTED-*: set MOSQ_WANTED in scripts/bootstrap.sh" >&2
            exit 1
            ;;
        esac
        (cd "$SRC_DIR" && run_logged "$MQ_LOG" apt-get -q "${APT_OPTS[@]}" source --download-only "mosquitto=$SID_VERSION")
    fi
    DSC="$(ls -1 "$SRC_DIR"/mosquitto_"$MOSQ_WANTED"-*.dsc | sort -V | tail -n 1)"
    TREE="$CACHE_DIR/build/mosquitto-$MOSQ_WANTED"
    if [ ! -f "$TREE/CMakeLists.txt" ]; then
        rm -rf "$TREE"
        mkdir -p "$CACHE_DIR/build"
        run_logged "$MQ_LOG" dpkg-source -x "$DSC" "$TREE"
    fi
    # $ORIGIN/../lib: the broker finds its own libmosquitto and plugins wherever the prefix is linked from
    run_logged "$MQ_LOG" cmake -S "$TREE" -B "$TREE/build" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
        -DCMAKE_INSTALL_PREFIX="$MOSQ_PREFIX" -DCMAKE_INSTALL_LIBDIR=lib '-DCMAKE_INSTALL_RPATH=$ORIGIN/../lib' \
        -DWITH_TESTS=OFF -DWITH_DOCS=OFF -DWITH_WEBSOCKETS=OFF -DWITH_HTTP_API=OFF \
        -DWITH_BUNDLED_DEPS=OFF -DWITH_SRV=OFF -DWITH_DLT=OFF -DWITH_SYSTEMD=OFF -DWITH_LTO=OFF
    run_logged "$MQ_LOG" make -C "$TREE/build" -j"$(nproc)"
    run_logged "$MQ_LOG" make -C "$TREE/build" install
    # upstream's converter of a 2.0 persistence file (mosquitto.db) into the plugin's database:
    # fleetstream.services runs it once when a state folder moves from 2.0 to 2.1
    install -D -m 0644 "$TREE/plugins/persist-sqlite/migrate_to_persist_sqlite.py" \
        "$MOSQ_PREFIX/share/mosquitto/migrate_to_persist_sqlite.py"
    if [ ! -x "$MOSQ_PREFIX/sbin/mosquitto" ] || [ ! -f "$MOSQ_PREFIX/lib/mosquitto_persist_sqlite.so" ]; then
        echo "mosquitto: build finished but $MOSQ_PREFIX/sbin/mosquitto or its persist-sqlite plugin is missing (see $MQ_LOG)" >&2
        exit 1
    fi
    echo "mosquitto: built $MOSQ_WANTED in $(elapsed "$t0") s"
fi

# ------------------------------------------------------------------ 4. venv
VENV="$REPO_ROOT/.venv"
STAMP="$VENV/.fleetstream-bootstrap"
t0="$(now)"
want_stamp="$( (sha256sum "$REPO_ROOT/pyproject.toml" | cut -d' ' -f1; "$PYTHON" -c 'import sys; print(sys.version)') | sha256sum | cut -d' ' -f1)"
if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ]; then
    echo "venv: ok (cached)"
else
    PIP_LOG="$LOG_DIR/pip.log"
    : >"$PIP_LOG"
    if [ ! -x "$VENV/bin/python" ]; then
        run_logged "$PIP_LOG" "$PYTHON" -m venv "$VENV"
    fi
    run_logged "$PIP_LOG" "$VENV/bin/python" -m pip install -q -e "$REPO_ROOT[server,edge,test]"
    echo "$want_stamp" >"$STAMP"
    echo "venv: installed in $(elapsed "$t0") s"
fi
# the broker of step 3, where fleetstream.services looks for it first
mkdir -p "$VENV/opt"
ln -sfn "$MOSQ_PREFIX" "$VENV/opt/mosquitto"

# ------------------------------------------------------------------ 5. npm (the page's map libraries)
# Exact versions from api/web/package.json, no lock file (it would record registry URLs);
# installed into .web/node_modules, which the API serves under /vendor/.
WEB="$REPO_ROOT/.web"
WEB_STAMP="$WEB/.fleetstream-bootstrap"
t0="$(now)"
want_web="$(sha256sum "$REPO_ROOT/api/web/package.json" | cut -d' ' -f1)"
if [ -f "$WEB_STAMP" ] && [ "$(cat "$WEB_STAMP")" = "$want_web" ] && [ -d "$WEB/node_modules/maplibre-gl" ]; then
    echo "npm: ok (cached)"
elif ! command -v npm >/dev/null 2>&1; then
    echo "npm: not found; the control-tower page will have no map (install Node.js and npm, then run this again)" >&2
else
    NPM_LOG="$LOG_DIR/npm.log"
    : >"$NPM_LOG"
    mkdir -p "$WEB"
    cp "$REPO_ROOT/api/web/package.json" "$WEB/package.json"
    (cd "$WEB" && run_logged "$NPM_LOG" npm install --no-package-lock --no-audit --no-fund --omit=dev)
    echo "$want_web" >"$WEB_STAMP"
    echo "npm: installed in $(elapsed "$t0") s"
fi
