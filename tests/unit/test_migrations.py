"""The shipped migrations each have a version of their own (a shared one would be skipped as applied)."""

from __future__ import annotations

from store.db import migrations


def test_every_migration_has_its_own_version() -> None:
    found = migrations()
    versions = [version for version, _, _ in found]
    assert versions == sorted(set(versions))
    assert versions[0] == 1 and all(b == a + 1 for a, b in zip(versions, versions[1:], strict=False))
    assert all(sql.strip() for _, _, sql in found)
