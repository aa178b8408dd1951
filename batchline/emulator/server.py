"""HTTP plumbing: routing, authentication, body framing and response writing.

Checks run in the order a real edge runs them: body size (413, before reading the body), route
(404), credentials (401), API version (400), then the injected HTTP faults, and only then the
endpoint. Every response carries a `request-id` header.
"""

from __future__ import annotations

import contextlib
import logging
import re
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final, Protocol
from urllib.parse import parse_qs, urlsplit

import orjson

from batchline.emulator import seeding
from batchline.emulator.api import BatchesApi, ResultsBody
from batchline.emulator.errors import ApiError, envelope, invalid_request

logger = logging.getLogger(__name__)

#: The API's create limit; "256 MB" is taken in decimal, the stricter reading.
MAX_BODY_BYTES: Final = 256_000_000
_DRAIN_CHUNK: Final = 1 << 20
_BATCH_PATH: Final = re.compile(r"/v1/messages/batches/(?P<id>[^/]+)(?P<action>/cancel|/results)?")
_MODEL_PATH: Final = re.compile(r"/v1/models/(?P<id>[^/]+)")

Handler = Callable[[BatchesApi, "Request"], "dict[str, Any] | ResultsBody"]


class _Readable(Protocol):
    def read(self, size: int, /) -> bytes: ...

    def readline(self, size: int, /) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Request:
    """What an endpoint needs from a request: the object id in its path, its query and body."""

    object_id: str
    query: dict[str, list[str]]
    body: Body


class Body:
    """The request body as a byte source, framed by Content-Length or chunked encoding."""

    def __init__(self, rfile: _Readable, content_length: int | None, chunked: bool) -> None:
        self._rfile = rfile
        self._chunked = chunked
        self._remaining = 0 if chunked else content_length or 0
        self._chunk_left = 0
        self._done = not chunked and self._remaining == 0
        self.received = 0

    def read(self, size: int, /) -> bytes:
        """Up to `size` bytes of the body; b"" at its end. Enforces the size limit."""
        if self._done:
            return b""
        data = self._read_chunked(size) if self._chunked else self._read_fixed(size)
        self.received += len(data)
        if self.received > MAX_BODY_BYTES:
            raise _too_large()
        return data

    def _read_fixed(self, size: int) -> bytes:
        data = self._rfile.read(min(size, self._remaining))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self._remaining -= len(data)
        self._done = self._remaining == 0
        return data

    def _read_chunked(self, size: int) -> bytes:
        if self._chunk_left == 0:
            line = self._rfile.readline(1024)
            try:
                self._chunk_left = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise invalid_request("Malformed chunked request body.") from None
            if self._chunk_left == 0:
                while self._rfile.readline(1024).strip():
                    pass  # trailer fields
                self._done = True
                return b""
        data = self._rfile.read(min(size, self._chunk_left))
        if not data:
            raise ConnectionError("client closed the connection mid-body")
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            self._rfile.readline(3)  # the CRLF closing the chunk
        return data

    def drain(self) -> None:
        """Read and drop the rest of the body so the connection can carry the next request."""
        while self.read(_DRAIN_CHUNK):
            pass


def _too_large() -> ApiError:
    return ApiError(
        413, "request_too_large", "Request exceeds the maximum allowed number of bytes."
    )


def _create(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.create(request.body)


def _list(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.list_batches(request.query)


def _retrieve(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.retrieve(request.object_id)


def _delete(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.delete(request.object_id)


def _cancel(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.cancel(request.object_id)


def _results(api: BatchesApi, request: Request) -> ResultsBody:
    return api.results(request.object_id)


def _list_models(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.list_models(request.query)


def _retrieve_model(api: BatchesApi, request: Request) -> dict[str, Any]:
    return api.retrieve_model(request.object_id)


_ITEM_ROUTES: Final[dict[tuple[str, str | None], Handler]] = {
    ("GET", None): _retrieve,
    ("DELETE", None): _delete,
    ("POST", "/cancel"): _cancel,
    ("GET", "/results"): _results,
}


def _route(method: str, path: str) -> tuple[Handler, str] | None:
    """The endpoint for a /v1 method and path, with the object id it names (or "")."""
    if path == "/v1/messages/batches":
        return {"POST": (_create, ""), "GET": (_list, "")}.get(method)
    if path == "/v1/models":
        return (_list_models, "") if method == "GET" else None
    if (model := _MODEL_PATH.fullmatch(path)) is not None:
        return (_retrieve_model, model["id"]) if method == "GET" else None
    match = _BATCH_PATH.fullmatch(path)
    if match is None:
        return None
    handler = _ITEM_ROUTES.get((method, match["action"]))
    return None if handler is None else (handler, match["id"])


class EmulatorHTTPServer(ThreadingHTTPServer):
    """A threading HTTP server that, on shutdown, closes its connections and waits for them.

    Handler threads are daemons, so a client that keeps a pooled connection open never blocks
    interpreter exit; the server tracks them itself so that `disconnect` can still join them
    before the database is closed under them.
    """

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, address: tuple[str, int], api: BatchesApi) -> None:
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)
        self.api = api
        self._live: dict[threading.Thread, socket.socket] = {}
        self._live_lock = threading.Lock()

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self._serve_connection, args=(request, client_address), daemon=True
        )
        with self._live_lock:
            self._live[thread] = request
        thread.start()

    def _serve_connection(self, request: Any, client_address: Any) -> None:
        try:
            self.process_request_thread(request, client_address)
        finally:
            with self._live_lock:
                self._live.pop(threading.current_thread(), None)

    def disconnect(self, timeout: float = 10.0) -> None:
        """Shut every client connection and wait for the handler threads to return."""
        with self._live_lock:
            live = dict(self._live)
        for connection in live.values():
            # A connection the peer already closed raises; it needs nothing more.
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        for thread in live:
            thread.join(timeout)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: EmulatorHTTPServer

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in separate writes; without this, Nagle's algorithm and the
        # client's delayed ACK add 40 ms to every response.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def _handle(self, method: str) -> None:
        request_id = seeding.request_id()
        try:
            body = self._body()
        except ApiError as error:
            # The body is not read at all, so the connection cannot be reused.
            self.close_connection = True
            self._send_error(error, request_id)
            return
        try:
            outcome = self._dispatch(method, body)
            body.drain()
        except ApiError as error:
            if error.status == 413:
                self.close_connection = True
            else:
                body.drain()
            self._send_error(error, request_id)
            return
        except ConnectionError:
            self.close_connection = True
            return
        except Exception:
            logger.exception("emulator failed on %s %s", method, self.path)
            self.close_connection = True
            self._send_error(ApiError(500, "api_error", "Internal server error"), request_id)
            return
        if isinstance(outcome, ResultsBody):
            self._send_results(outcome, request_id)
        else:
            self._send_json(200, outcome, request_id)

    def _body(self) -> Body:
        chunked = "chunked" in self.headers.get("Transfer-Encoding", "").lower()
        raw_length = self.headers.get("Content-Length")
        length: int | None = None
        if raw_length is not None and not chunked:
            try:
                length = int(raw_length)
            except ValueError:
                raise invalid_request("Invalid Content-Length header.") from None
            if length > MAX_BODY_BYTES:
                raise _too_large()
        return Body(self.rfile, length, chunked)

    def _dispatch(self, method: str, body: Body) -> dict[str, Any] | ResultsBody:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        api = self.server.api
        if url.path == "/_emulator/stats" and method == "GET":
            return api.stats(query)
        route = _route(method, url.path)
        if route is None:
            raise ApiError(404, "not_found_error", "Not found")
        handler, object_id = route
        if handler is _create:
            api.count_create_call()
        self._authenticate()
        fault = api.http_fault()
        if fault is not None:
            raise fault
        return handler(api, Request(object_id, query, body))

    def _authenticate(self) -> None:
        api_key = self.headers.get("x-api-key", "").strip()
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        bearer = token.strip() if scheme.lower() == "bearer" else ""
        if not api_key and not bearer:
            raise ApiError(401, "authentication_error", "x-api-key header is required")
        if not self.headers.get("anthropic-version"):
            raise invalid_request("anthropic-version: header is required")

    def _start(self, status: int, content_type: str, length: int, request_id: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(length))
        self.send_header("request-id", request_id)
        if self.close_connection:
            self.send_header("Connection", "close")

    def _send_json(
        self,
        status: int,
        payload: dict[str, Any],
        request_id: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        data = orjson.dumps(payload)
        self._start(status, "application/json", len(data), request_id)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, error: ApiError, request_id: str) -> None:
        self._send_json(
            error.status,
            envelope(error.error_type, error.message, request_id),
            request_id,
            error.headers,
        )

    def _send_results(self, results: ResultsBody, request_id: str) -> None:
        self._start(200, "application/x-jsonl", results.length, request_id)
        self.end_headers()
        sent = 0
        try:
            for chunk in results.chunks:
                if results.cut_at is not None and sent + len(chunk) >= results.cut_at:
                    self.wfile.write(chunk[: results.cut_at - sent])
                    # Announced length, half the bytes, then a hard close: a lost connection.
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(chunk)
                sent += len(chunk)
        except OSError:
            self.close_connection = True
        finally:
            results.chunks.close()
