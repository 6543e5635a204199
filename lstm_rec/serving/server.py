"""The uvicorn server of the HTTP service, with the limits that keep it up: idle and half-sent connections are
closed, half-sent headers are bounded, connections are counted, and access log lines repeat at most a short prefix of
a path."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from lstm_rec.serving.bodies import short

log = logging.getLogger(__name__)


class DeadlineH11Protocol(H11Protocol):
    """uvicorn's h11 protocol with one more timeout: from connecting, or from its previous answer, a client has
    `config.request_timeout` seconds to send a whole request (headers and body), else the connection is closed.
    uvicorn alone waits forever for a client that connects and sends nothing, or half a request."""

    _deadline: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._disarm()
        self._deadline = self.loop.call_later(self.config.request_timeout, self._on_deadline)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _on_deadline(self) -> None:
        self._deadline = None
        receiving = self.conn.their_state in (h11.IDLE, h11.SEND_BODY)  # DONE: the request is in, being answered
        if receiving and not self.transport.is_closing():
            log.info("closing a connection that sent no whole request in %s s", self.config.request_timeout)
            self.transport.close()


class ServiceConfig(uvicorn.Config):
    """uvicorn's settings with DeadlineH11Protocol's `request_timeout` (seconds)."""

    def __init__(self, app: Any, request_timeout: float, **settings: Any) -> None:
        super().__init__(app, http=DeadlineH11Protocol, **settings)
        self.request_timeout = request_timeout


def server_config(
    app: Any,
    host: str = "127.0.0.1",
    port: int = 8000,
    log_level: str = "info",
    request_timeout: float = 10.0,
    timeout_keep_alive: float = 5.0,
    h11_max_incomplete_event_size: int = 16_384,
    max_connections: int = 100,
) -> ServiceConfig:
    """The server's settings (scripts/serve.py, conf/serve.yaml): a client gets `request_timeout` s to send a whole
    request, an idle kept-alive connection is closed after `timeout_keep_alive` s, at most
    `h11_max_incomplete_event_size` bytes of a request line and headers still arriving are kept (past them: 400), and
    past `max_connections` open connections a request gets 503."""
    for name, value in {"request_timeout": request_timeout, "timeout_keep_alive": timeout_keep_alive}.items():
        if not value > 0:
            raise ValueError(f"the server's {name} must be a positive number of seconds, got {value!r}")
    config = ServiceConfig(
        app,
        request_timeout=request_timeout,
        host=host,
        port=port,
        log_level=log_level,
        timeout_keep_alive=timeout_keep_alive,
        h11_max_incomplete_event_size=h11_max_incomplete_event_size,
        limit_concurrency=max_connections,
    )
    access = logging.getLogger("uvicorn.access")  # configured by uvicorn.Config just now
    if not any(isinstance(f, ShortRequestLine) for f in access.filters):
        access.addFilter(ShortRequestLine())
    return config


class ShortRequestLine(logging.Filter):
    """Cuts the path of uvicorn's access log lines to a short prefix (bodies are never logged)."""

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (*args[:2], short(args[2]), *args[3:])
        return True
