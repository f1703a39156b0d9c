"""``fleetstream api``: one uvicorn process serving the application until SIGTERM or Ctrl-C."""

from __future__ import annotations

import logging
from typing import Any

import uvicorn

from api.app import create_app
from core.settings import Settings

__all__ = ["run_api"]

log = logging.getLogger("fleetstream.api")


class _Server(uvicorn.Server):
    """Ends the open live streams as soon as a stop is asked for, so shutdown does not wait on them."""

    def __init__(self, config: uvicorn.Config, closing: Any) -> None:
        super().__init__(config)
        self._closing = closing

    def handle_exit(self, sig: int, frame: Any) -> None:
        self._closing.set()
        super().handle_exit(sig, frame)


def run_api(settings: Settings) -> None:
    """Serve the API on ``api_host:api_port`` (blocks)."""
    app = create_app(settings)
    config = uvicorn.Config(
        app,
        host=settings.api_host,
        port=settings.api_port,
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=3,
        lifespan="on",
    )
    _Server(config, app.state.closing).run()
