"""The Flask app served for real on a loopback port, in a thread, as ``hfs-cds serve`` serves it.

The server binds port 0 first and the app is built afterwards, so the redirect URI can name the real
port without a race; requests reach the app through a small dispatcher.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

WsgiApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class _Dispatch:
    """A WSGI callable whose target is set once the app exists."""

    def __init__(self) -> None:
        self.target: Flask | None = None

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        assert self.target is not None, "the app is not built yet"
        return self.target(environ, start_response)


@dataclass
class FakeClock:
    """The service's clock (``create_app({"CLOCK": clock})``): real time plus what a test adds."""

    offset: timedelta = field(default_factory=timedelta)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, delta: timedelta) -> None:
        self.offset += delta


@dataclass
class ServedApp:
    app: Flask
    base: str
    server: BaseWSGIServer

    def url(self, path: str) -> str:
        return self.base + path


@contextmanager
def serving(build: Callable[[str], Flask]) -> Iterator[ServedApp]:
    """Serve ``build(base_url)`` on a free loopback port until the block ends."""
    dispatch = _Dispatch()
    server = make_server("127.0.0.1", 0, dispatch, threaded=True)
    base = f"http://127.0.0.1:{server.port}"
    dispatch.target = build(base)
    thread = threading.Thread(target=server.serve_forever, name="smart-app", daemon=True)
    thread.start()
    try:
        yield ServedApp(dispatch.target, base, server)
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


#: ``serve_smart(**settings)`` and ``seed(patient_id, resources=None, **kw)`` (see fixtures.py).
ServeSmart = Callable[..., ServedApp]
Seed = Callable[..., list[dict[str, Any]]]
