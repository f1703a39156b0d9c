"""Real dense GPS recordings, fetched from Debian source packages when they are needed.

Several GPS tools ship real drives as test data in their source packages. The trace
evaluation (``trace_evaluation.py``) fetches the *orig* tarball of each package once,
checks it against a pinned SHA-256, and extracts only the files it uses into
``<FLEETSTREAM_CACHE_DIR>/traces`` (default ``/var/cache/fleetstream``). Nothing of them
enters the repository (they are GPL test data of other projects).

How, with the machine's own Debian archive (the mirror address is read from
``/etc/apt/sources.list.d/debian.sources`` at run time, as ``scripts/bootstrap.sh`` does):
a private ``sources.list`` with ``deb-src`` lines for the suites needed, ``apt-get update``
on private list and cache folders (the system's are left alone), ``apt-get --print-uris
source PKG/SUITE`` for the orig tarball's address, and ``apt-helper download-file`` with the
pinned hash. Only the orig tarball is fetched: some packages' other source files are
missing from partial mirrors.

``fetch(name)`` returns the local path of a trace; ``TraceUnavailable`` says why it could not.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

__all__ = ["ARCHIVES", "TRACES", "Archive", "TraceFile", "TraceUnavailable", "cache_dir", "debian_mirror", "fetch"]

KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
SOURCES = Path("/etc/apt/sources.list.d/debian.sources")
APT_HELPER = "/usr/lib/apt/apt-helper"


class TraceUnavailable(RuntimeError):
    """A trace could not be fetched (no Debian archive configured, the mirror lacks the file,
    a hash mismatch); the message says which and why."""


@dataclass(frozen=True)
class Archive:
    """A Debian source package's orig tarball: package, suite, file name and its SHA-256."""

    package: str
    suite: str
    file: str
    sha256: str


@dataclass(frozen=True)
class TraceFile:
    """One recording inside an archive (``member``: its path in the tarball, below the top
    folder, which carries the upstream version); the archive's pinned hash covers it."""

    archive: str
    member: str


ARCHIVES = {
    "gpsbabel": Archive(
        "gpsbabel",
        "trixie",
        "gpsbabel_1.10.0+ds.orig.tar.xz",
        "df485c7544623793beb2f2ca5f60ceabb71a7a913fc762c5af01bf607446513a",
    ),
    "josm": Archive(
        "josm",
        "bookworm",
        "josm_0.0.svn18646+dfsg.orig.tar.gz",
        "69f28928122302c76f7385468406891c62d155309af2076c474347d504f255e9",
    ),
    "marble": Archive(
        "marble",
        "bookworm",
        "marble_22.12.3.orig.tar.xz",
        "88511d31b17bcbc389c7aabbf0ca64bfa01239c0d5763f2877c8c75837968d71",
    ),
}

# member paths are matched by their ending (the top folder carries the upstream version)
TRACES = {
    "sbn-v13.gpx": TraceFile("gpsbabel", "reference/track/sbn-v13.gpx"),
    "garmin_xt_strk.gpx": TraceFile("gpsbabel", "reference/track/garmin_xt_strk.gpx"),
    "gtrnctr_power.tcx": TraceFile("gpsbabel", "reference/track/gtrnctr_power.tcx"),
    "dg100.gpx": TraceFile("gpsbabel", "reference/track/dg100.gpx"),
    "josm-1433.nmea": TraceFile("josm", "test/data/regress/1433/2008-08-14-16-04-58.nmea"),
    "mjolby.gpx": TraceFile("marble", "examples/gpx/mjolby.gpx"),
    "drumlish.gpx": TraceFile("josm", "test/data/regress/15634/drumlish.gpx"),
}


def cache_dir() -> Path:
    """Where fetched archives and extracted traces are kept (``FLEETSTREAM_CACHE_DIR``, as the bootstrap)."""
    return Path(os.environ.get("FLEETSTREAM_CACHE_DIR", "/var/cache/fleetstream")) / "traces"


def debian_mirror(sources: Path = SOURCES) -> str:
    """The machine's main Debian archive URI: the first deb822 stanza with ``URIs:`` whose
    suites are not the security ones (then the one-line ``/etc/apt/sources.list``)."""
    if sources.is_file():
        for stanza in re.split(r"\n\s*\n", sources.read_text(encoding="utf-8")):
            uris = re.search(r"^URIs:\s*(\S+)", stanza, re.MULTILINE)
            suites = re.search(r"^Suites:(.*)$", stanza, re.MULTILINE)
            if uris and not (suites and "security" in suites.group(1)):
                return uris.group(1)
    legacy = Path("/etc/apt/sources.list")
    if legacy.is_file():
        for line in legacy.read_text(encoding="utf-8").splitlines():
            parts = line.split()
            if parts and parts[0] == "deb" and "security" not in line:
                for part in parts[1:]:
                    if re.match(r"^[a-z]+://", part):
                        return part
    raise TraceUnavailable(f"no Debian archive URI in {sources} or /etc/apt/sources.list")


def _apt(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    options = [
        "-o",
        f"Dir::Etc::SourceList={root / 'sources.list'}",
        "-o",
        "Dir::Etc::SourceParts=/dev/null",
        "-o",
        f"Dir::State::Lists={root / 'lists'}",
        "-o",
        f"Dir::Cache={root / 'cache'}",
    ]
    return subprocess.run(["apt-get", "-qq", *options, *args], capture_output=True, text=True, timeout=300)


def _archive(name: str) -> Path:
    """The archive's tarball in the cache, fetched (and its hash checked) when missing."""
    archive = ARCHIVES[name]
    root = cache_dir()
    path = root / archive.file
    if path.is_file() and _sha256(path) == archive.sha256:
        return path
    apt = root / "apt"
    for sub in ("lists/partial", "cache/archives/partial"):
        (apt / sub).mkdir(parents=True, exist_ok=True)
    mirror = debian_mirror()
    suites = sorted({a.suite for a in ARCHIVES.values()})
    (apt / "sources.list").write_text(
        "".join(f"deb-src [signed-by={KEYRING}] {mirror} {suite} main\n" for suite in suites), encoding="utf-8"
    )
    if not any((apt / "lists").glob("*Sources*")):
        done = _apt(apt, "update")
        if done.returncode != 0:
            raise TraceUnavailable(f"apt-get update of the deb-src lists failed: {done.stderr.strip()[:300]}")
    listed = _apt(apt, "--print-uris", "source", f"{archive.package}/{archive.suite}")
    found = [line for line in listed.stdout.splitlines() if archive.file in line]
    if not found:  # stale lists: refresh once
        _apt(apt, "update")
        listed = _apt(apt, "--print-uris", "source", f"{archive.package}/{archive.suite}")
        found = [line for line in listed.stdout.splitlines() if archive.file in line]
    if not found:
        raise TraceUnavailable(
            f"{archive.package}/{archive.suite} lists no {archive.file}: {(listed.stderr or listed.stdout)[:300]}"
        )
    uri = found[0].split()[0].strip("'")
    tmp = path.with_suffix(".part")
    got = subprocess.run(
        [APT_HELPER, "download-file", uri, str(tmp), f"SHA256:{archive.sha256}"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if got.returncode != 0 or not tmp.is_file():
        tmp.unlink(missing_ok=True)
        raise TraceUnavailable(f"{archive.file} could not be downloaded: {(got.stderr or got.stdout).strip()[:300]}")
    os.replace(tmp, path)
    return path


def fetch(trace: str) -> Path:
    """The local path of ``trace`` (a key of ``TRACES``), fetched and extracted when missing."""
    spec = TRACES[trace]
    out = cache_dir() / "files" / trace
    if out.is_file():
        return out
    tarball = _archive(spec.archive)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball) as tar:
        for member in tar:
            if member.isfile() and member.name.endswith("/" + spec.member):
                source = tar.extractfile(member)
                if source is None:
                    break
                tmp = out.with_suffix(".part")
                with source, tmp.open("wb") as sink:
                    shutil.copyfileobj(source, sink)
                os.replace(tmp, out)
                return out
    raise TraceUnavailable(f"{tarball.name} holds no {spec.member}")


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
