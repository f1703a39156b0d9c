"""Bearer tokens of the HTTP API: one tenant and one role each, stored hashed.

A token is ``fs_`` followed by 43 URL-safe characters (32 random bytes). Only its
SHA-256 is stored (``api_tokens.token_hash``): 256 random bits need no salt or slow
hash, and a leaked table gives no usable token. ``id``, the first 12 hex digits of the
hash, names a token in listings, in the alert actions it signs and in ``revoke``.

Roles: ``viewer`` reads everything of its tenant; ``dispatcher`` may also write (plans,
alert actions).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

__all__ = [
    "ROLES",
    "Principal",
    "TokenError",
    "add_token",
    "list_tokens",
    "new_token",
    "revoke_token",
    "token_hash",
    "token_id",
]

ROLES = ("viewer", "dispatcher")
_PREFIX = "fs_"


class TokenError(ValueError):
    """A token request that cannot be done (unknown role, bad tenant, nothing to revoke)."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request is: the token's id, tenant, role and name."""

    token_id: str
    tenant: str
    role: str
    name: str

    @property
    def can_write(self) -> bool:
        return self.role == "dispatcher"

    @property
    def actor(self) -> str:
        """How alert actions name who did them: ``name (token id)``."""
        return f"{self.name} ({self.token_id})" if self.name else self.token_id


def new_token() -> str:
    """A fresh random token."""
    return _PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> bytes:
    """SHA-256 of the token's UTF-8 bytes: what is stored and looked up."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def token_id(digest: bytes) -> str:
    """The token's public id: the first 12 hex digits of its hash."""
    return digest.hex()[:12]


def _check_tenant(tenant: str) -> None:
    # the contract's id rule (core/contract.py): tenants are topic levels too
    if not (0 < len(tenant) <= 64 and all(c.isascii() and (c.isalnum() or c in "_-") for c in tenant)):
        raise TokenError(f"tenant {tenant!r} is not a valid id ([A-Za-z0-9_-], 1-64 characters)")


def add_token(conn: psycopg.Connection[Any], tenant: str, role: str = "viewer", name: str = "") -> tuple[str, str]:
    """Create a token for ``tenant`` with ``role``; returns (token, id). The token is shown once."""
    if role not in ROLES:
        raise TokenError(f"role {role!r} is not one of {', '.join(ROLES)}")
    _check_tenant(tenant)
    token = new_token()
    digest = token_hash(token)
    conn.execute(
        "INSERT INTO api_tokens (id, token_hash, tenant, role, name) VALUES (%s, %s, %s, %s, %s)",
        (token_id(digest), digest, tenant, role, name[:100]),
    )
    return token, token_id(digest)


def revoke_token(conn: psycopg.Connection[Any], id_or_token: str) -> str:
    """Revoke a token given by its id or by the token itself; returns its id. TokenError if unknown."""
    key = token_id(token_hash(id_or_token)) if id_or_token.startswith(_PREFIX) else id_or_token
    row = conn.execute(
        "UPDATE api_tokens SET revoked_at = coalesce(revoked_at, now()) WHERE id = %s RETURNING id", (key,)
    ).fetchone()
    if row is None:
        raise TokenError(f"no token with id {key!r}")
    return str(row[0])


def list_tokens(conn: psycopg.Connection[Any], tenant: str | None = None) -> list[dict[str, Any]]:
    """Every token (of ``tenant``): id, tenant, role, name, created_at, revoked_at (never the token)."""
    rows = conn.execute(
        "SELECT id, tenant, role, name, created_at, revoked_at FROM api_tokens "
        "WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant, created_at",
        {"tenant": tenant},
    ).fetchall()
    keys = ("id", "tenant", "role", "name", "created_at", "revoked_at")
    return [
        {k: (v.isoformat() if isinstance(v, datetime) else v) for k, v in zip(keys, row, strict=True)} for row in rows
    ]
