"""HTTP plumbing: a stdlib threading server on loopback, the request and answer value types, and
a handler that turns one into the other through a `handle` function it is given. It knows
nothing of the service: the routes live in routes.py."""

from __future__ import annotations

import json
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit
from xml.sax.saxutils import escape

# Every answer carries it: the pack's client notes it and its reports say the run was emulated.
EMULATOR_HEADER = "X-Wanx-Emulator"
# Two base64 images of at most 10 MiB each, plus JSON; anything far bigger is not a real request.
MAX_BODY_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True)
class Incoming:
    method: str
    path: str
    query: dict[str, str]
    headers: Mapping[str, str]  # lower-case names; lives only for the request
    body: bytes
    body_too_large: bool = False  # the body was not read (over MAX_BODY_BYTES or a bad length)


@dataclass(frozen=True)
class Reply:
    status: int
    body: bytes = b""
    content_type: str = "application/json; charset=utf-8"
    drop: bool = False  # close the connection without answering
    # Announce this Content-Length but send only `body`, then close: a transfer cut mid-body.
    declared_length: int | None = None
    request_id: str | None = None  # the request_id in a JSON body
    delivers: tuple[str, int] | None = None  # (task_id, index) of the result image this answer is, in full
    on_unsent: Callable[[], None] | None = None  # called when writing the answer fails

    @classmethod
    def json(cls, status: int, payload: Mapping[str, Any]) -> Reply:
        data = {"request_id": str(uuid.uuid4()), **payload}
        return cls(status, json.dumps(data, ensure_ascii=False).encode("utf-8"), request_id=str(data["request_id"]))

    @classmethod
    def error(cls, status: int, code: str, message: str, *, request_id: str | None = None) -> Reply:
        payload = {"code": code, "message": message}
        return cls.json(status, payload if request_id is None else {"request_id": request_id, **payload})

    @classmethod
    def xml_error(cls, status: int, code: str, message: str) -> Reply:
        """An error as object storage (OSS) answers one: XML, not DashScope's JSON."""
        body = ('<?xml version="1.0" encoding="UTF-8"?>\n<Error>\n'
                f"  <Code>{escape(code)}</Code>\n  <Message>{escape(message)}</Message>\n"
                f"  <RequestId>{uuid.uuid4().hex.upper()[:24]}</RequestId>\n</Error>\n")
        return cls(status, body.encode("utf-8"), content_type="application/xml")


DROPPED = Reply(0, drop=True)

Handle = Callable[[Incoming], Reply]


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], handle: Handle) -> None:
        self.handle = handle
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(address, _RequestHandler)

    def track(self, conn: socket.socket, *, is_open: bool) -> None:
        with self._open_lock:
            (self._open.add if is_open else self._open.discard)(conn)

    def close_open_connections(self) -> None:
        with self._open_lock:
            conns = list(self._open)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _RequestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real gateway
    server_version = "wanx-imageedit-emulator"
    timeout = 60  # idle keep-alive connections are closed after this
    # Headers and body go out in separate writes; without TCP_NODELAY, Nagle plus the client's
    # delayed ACK adds ~40 ms to every answer.
    disable_nagle_algorithm = True
    server: Server

    def setup(self) -> None:
        super().setup()
        self.server.track(self.connection, is_open=True)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            self.server.track(self.connection, is_open=False)

    def do_GET(self) -> None:  # noqa: N802 - http.server naming
        self._serve("GET")

    def do_POST(self) -> None:  # noqa: N802
        self._serve("POST")

    def do_PUT(self) -> None:  # noqa: N802
        self._serve("PUT")

    def do_DELETE(self) -> None:  # noqa: N802
        self._serve("DELETE")

    def do_PATCH(self) -> None:  # noqa: N802
        self._serve("PATCH")

    def _serve(self, method: str) -> None:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        too_large = not 0 <= length <= MAX_BODY_BYTES
        body = self.rfile.read(length) if length > 0 and not too_large else b""
        split = urlsplit(self.path)
        incoming = Incoming(
            method=method, path=unquote(split.path), query=dict(parse_qsl(split.query, keep_blank_values=True)),
            headers={k.lower(): v for k, v in self.headers.items()}, body=body, body_too_large=too_large,
        )
        reply = self.server.handle(incoming)
        if reply.drop or too_large or reply.declared_length is not None:
            self.close_connection = True  # dropped, cut short, or an unread body is still on the wire
        if not reply.drop:  # a drop writes nothing: the client just sees the connection close
            self._send(reply)

    def _send(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", reply.content_type)
        self.send_header("Content-Length", str(reply.declared_length or len(reply.body)))
        self.send_header(EMULATOR_HEADER, "1")  # clients can tell (and report) that nothing real was billed
        if self.close_connection:
            self.send_header("Connection", "close")
        try:
            self.end_headers()
            self.wfile.write(reply.body)
            self.wfile.flush()
        except OSError:
            if reply.on_unsent is not None:
                reply.on_unsent()
            raise

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - http.server signature
        """Silent: the request log lives in Emulator.requests (and never includes the key)."""
