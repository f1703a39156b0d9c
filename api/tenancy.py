"""The one place where the API touches a tenant's data: a transaction opened for that tenant.

Every ``/v1`` query runs inside :meth:`TenantDatabase.session`, and every query filters
by the session's tenant (``api/queries.py``; a unit test checks each statement). The
session also records the tenant in the transaction (``fleetstream.tenant``), and reads
run in READ ONLY transactions, so a read handler cannot write even by mistake.

When per-tenant database roles with row-level security arrive, they slot in here: the
session switches to the tenant's role (``SET LOCAL ROLE``) or the policies read
``current_setting('fleetstream.tenant')``, and every handler is covered at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from api.tokens import Principal, token_hash
from core.plan import Plan
from store.db import connect
from store.plans import store_plan

__all__ = ["TenantDatabase"]

_LOOKUP = (
    "SELECT id, tenant, role, name FROM api_tokens WHERE token_hash = %s AND revoked_at IS NULL"  # any tenant: login
)


class TenantDatabase:
    """The API's connection pool and the tenant-scoped transactions handlers get from it.

    The pool's connections return rows as dicts (:meth:`pool_kwargs`).
    """

    @staticmethod
    def pool_kwargs() -> dict[str, Any]:
        """Connection arguments of the pool: dict rows, transactions, a connect timeout."""
        return {"autocommit": False, "connect_timeout": 5, "row_factory": dict_row}

    def __init__(self, pool: AsyncConnectionPool[Any], dsn: str) -> None:
        self.pool = pool
        self.dsn = dsn

    @asynccontextmanager
    async def session(self, tenant: str, write: bool = False) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A transaction for ``tenant`` (READ ONLY unless ``write``), committed when the block ends.

        The connection's rows are dicts. Every statement run on it must filter by tenant.
        """
        async with self.pool.connection() as conn:
            async with conn.transaction():
                if not write:
                    await conn.execute("SET TRANSACTION READ ONLY")
                await conn.execute("SELECT set_config('fleetstream.tenant', %s, true)", (tenant,))
                yield conn

    async def store_plan(self, tenant: str, plan: Plan) -> tuple[int, bool]:
        """Store ``plan`` (of ``tenant``) as the vehicle's next revision through ``store.plans``, the
        store and versioning ``fleetstream plan load`` uses; returns (version, stored)."""
        if plan.tenant != tenant:
            raise ValueError(f"a plan of tenant {plan.tenant!r} in a session of {tenant!r}")

        def store() -> tuple[int, bool]:  # store_plan is synchronous psycopg: a thread of its own
            with connect(self.dsn, autocommit=True) as conn:
                conn.execute("SELECT set_config('fleetstream.tenant', %s, false)", (tenant,))
                return store_plan(conn, plan, "api")

        return await asyncio.to_thread(store)

    async def principal(self, token: str) -> Principal | None:
        """Who holds ``token`` (None: unknown or revoked). The only query not scoped to a tenant:
        it is how a request's tenant is found."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(_LOOKUP, (token_hash(token),))
            row = await cur.fetchone()
        if row is None:
            return None
        return Principal(str(row["id"]), str(row["tenant"]), str(row["role"]), str(row["name"]))

    async def ping(self) -> None:
        """One round trip to the database (raises when it is unreachable)."""
        async with self.pool.connection() as conn:
            await conn.execute("SELECT 1")
