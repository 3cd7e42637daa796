"""A fault-injecting HTTP/1.1 reverse proxy for tests: every request goes on to the real S3 server, some get hurt.

Point the client at the proxy (``StorageConfig.s3_endpoint_url = proxy.endpoint_url``). The client then signs
``Host: 127.0.0.1:<proxy port>``; the proxy forwards the request line, every header (``Host`` included) and the
body unchanged, so SeaweedFS checks the SigV4 signature against exactly what was signed. Only hop-by-hop headers
that are never signed (``Connection``, ``Keep-Alive``, ``Expect``) are dropped on the way up.

Which requests are hurt is a seeded random draw (``FaultPlan.rate``); the kinds are handed out in turn
(``FaultPlan.kinds`` order), so a test with enough faulted requests sees every kind, and ``FaultProxy.injected``
counts what was really done per kind:

* ``500``: an S3 ``InternalError`` response, nothing forwarded.
* ``503``: an S3 ``SlowDown`` response (throttling), nothing forwarded.
* ``delay``: the request is forwarded after ``FaultPlan.delay_s`` seconds (uniform in the range).
* ``reset``: the connection is reset (TCP RST) before any response.
* ``truncate``: object GETs only (``/bucket/key``: the streamed bodies a client can check against their
  ``Content-Length``; botocore does not check the length of list pages); the response headers (with the full
  ``Content-Length``) and part of the 2xx body are sent, then the connection is closed. Bodies are relayed in
  64 KiB pieces and the cut is a random byte, so it can fall anywhere in a multi-MB object. An object GET that
  has no 2xx body to cut (a 404, an empty object) is reset instead and counted as ``reset``.
* ``stall``: the proxy goes silent for ``FaultPlan.stall_s`` seconds (make it longer than the client's read
  timeout), then closes the connection: mid-body for an object GET with a 2xx body, otherwise in place of the
  response (the request did reach the server: an answer lost on the way back, as in real networks). At most
  ``FaultPlan.max_stalls`` of them in the proxy's life (``None``: no limit, a stalled server).

``FaultProxy.drop_connections()`` cuts every open connection at once (e.g. to break a stream mid-read), and
``FaultProxy.requests`` counts requests per method and path, so tests can count GETs of an object.

Standard library only (``http.server``, ``http.client``, ``socket``); one thread per client connection.
"""

import contextlib
import http.client
import logging
import random
import socket
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from urllib.parse import urlsplit


logger = logging.getLogger(__name__)

FAULT_KINDS = ("500", "503", "delay", "reset", "truncate", "stall")
_CHUNK = 64 * 1024  # bytes per relayed piece of a response body
_HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-connection", "expect", "transfer-encoding", "te"})
_ERROR_XML = (
    '<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>{message}</Message>'
    "<Resource>{path}</Resource><RequestId>fault-proxy</RequestId></Error>"
)
_ERRORS = {
    "500": ("InternalError", "Injected internal error"),
    "503": ("SlowDown", "Please reduce your request rate."),
}


def proxied_storage_overrides(proxy: "FaultProxy") -> list[str]:
    """Hydra overrides sending ``s3://`` through ``proxy``: 2 s timeouts (a 3 s stall outlasts one), 6 attempts,
    fast backoff, ``standard`` retries (no client-side rate limiting after injected throttling)."""
    return [
        "storage=s3",
        f"storage.s3_endpoint_url={proxy.endpoint_url}",
        "storage.s3_region=us-east-1",
        "storage.s3_addressing_style=path",
        "storage.retry_mode=standard",
        "storage.max_attempts=6",
        "storage.backoff_base_s=0.01",
        "storage.backoff_max_s=0.1",
        "storage.connect_timeout_s=2",
        "storage.read_timeout_s=2",
    ]


@dataclass(frozen=True)
class FaultPlan:
    """What the proxy does to requests.

    Attributes:
        rate: Probability (0..1) that a request gets a fault; drawn per request from a generator seeded by ``seed``.
        kinds: Fault kinds handed out in turn to faulted requests (each from ``FAULT_KINDS``).
        seed: Seed of the draw; the same seed faults the same request numbers (in arrival order).
        delay_s: ``(low, high)`` seconds of a ``delay`` fault.
        stall_s: Seconds a ``stall`` fault stays silent; make it longer than the client's read timeout.
        max_stalls: Most ``stall`` faults in the proxy's life; ``None`` for no limit.
        methods: Only requests with these HTTP methods get faults; empty means all methods.
        path_suffixes: Only requests whose path (without query) ends with one of these get faults; empty means all.
    """

    rate: float = 0.0
    kinds: tuple[str, ...] = FAULT_KINDS
    seed: int = 0
    delay_s: tuple[float, float] = (0.2, 0.5)
    stall_s: float = 3.0
    max_stalls: int | None = 1
    methods: frozenset[str] = field(default_factory=frozenset)
    path_suffixes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        unknown = set(self.kinds) - set(FAULT_KINDS)
        if unknown or not self.kinds:
            raise ValueError(f"fault kinds must be a non-empty subset of {FAULT_KINDS}, got {self.kinds}")
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {self.rate}")


def _is_object_get(method: str, path: str) -> bool:
    """A GET of an object (path-style ``/bucket/key``), not of a bucket listing (``/bucket?list-type=2``)."""
    return method == "GET" and "/" in path.split("?")[0].strip("/")


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stalled or idle keep-alive connection never blocks shutdown
    request_queue_size = 128
    proxy: "FaultProxy"


class _Handler(BaseHTTPRequestHandler):
    """One client connection; HTTP/1.1 keep-alive, as botocore's connection pool expects."""

    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:
        logger.debug("fault proxy: " + format, *args)

    def setup(self) -> None:
        super().setup()
        self.server.proxy._track(self.connection, open_=True)

    def finish(self) -> None:
        self.server.proxy._track(self.connection, open_=False)
        with contextlib.suppress(OSError):  # a connection we reset has nothing left to flush
            super().finish()

    def do_GET(self) -> None:
        self._serve()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_GET  # noqa: N815

    def _serve(self) -> None:
        proxy = self.server.proxy
        body = self._read_body()  # in full before anything else: a fault never leaves half a request unread
        kind = proxy._draw(self.command, self.path)
        try:
            if kind in _ERRORS:
                self._send_error_xml(kind)
            elif kind == "reset":
                self._reset()
            elif kind == "delay":
                proxy._sleep(proxy._delay_s())
            if kind in (None, "delay", "truncate", "stall"):
                kind = self._forward(body, kind)
        except OSError as exc:  # the client went away (e.g. its own timeout while we stalled)
            logger.debug("fault proxy: client connection lost: %s", exc)
            self.close_connection = True
        if kind is not None:
            proxy._count(kind)

    def _read_body(self) -> bytes:
        """The request body: ``Content-Length`` bytes, or the decoded chunks of a chunked body."""
        if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = []
        while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
            parts.append(self.rfile.read(size))
            self.rfile.readline()
        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
            pass  # trailers end with an empty line
        return b"".join(parts)

    def _send_error_xml(self, kind: str) -> None:
        code, message = _ERRORS[kind]
        payload = _ERROR_XML.format(code=code, message=message, path=self.path.split("?")[0]).encode()
        self._write_head(
            int(kind), "Injected", [("Content-Type", "application/xml"), ("Content-Length", str(len(payload)))]
        )
        if self.command != "HEAD":
            self.wfile.write(payload)

    def _write_head(self, status: int, reason: str, headers: list[tuple[str, str]]) -> None:
        lines = [f"HTTP/1.1 {status} {reason}", *(f"{k}: {v}" for k, v in headers), "", ""]
        self.wfile.write("\r\n".join(lines).encode("latin-1"))

    def _reset(self) -> None:
        """Closes with SO_LINGER 0, so the client's next read sees ECONNRESET, not a clean end of stream."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self._close()

    def _close(self) -> None:
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)
        self.connection.close()

    def _forward(self, body: bytes, kind: str | None) -> str | None:
        """Sends the request upstream unchanged and relays the answer, hurt by ``kind``; returns the fault done."""
        proxy = self.server.proxy
        upstream = http.client.HTTPConnection(proxy.upstream_host, proxy.upstream_port, timeout=60)
        try:
            upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in _HOP_BY_HOP:
                    upstream.putheader(name, value)
            if "Content-Length" not in self.headers and self.command in ("PUT", "POST"):
                upstream.putheader("Content-Length", str(len(body)))  # a chunked body was decoded above
            upstream.endheaders(body or None)
            response = upstream.getresponse()
            headers = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            if response.chunked or response.getheader("Content-Length") is None:
                data = response.read()  # relayed with a length: the client reads one plain response either way
                headers = [(k, v) for k, v in headers if k.lower() != "content-length"]
                headers.append(("Content-Length", str(len(data))))
                pieces: Iterable[bytes] = [data] if data else []
            else:
                pieces = iter(lambda: response.read(_CHUNK), b"")
            return self._relay(response.status, response.reason, headers, pieces, kind)
        finally:
            upstream.close()

    def _relay(
        self, status: int, reason: str, headers: list[tuple[str, str]], pieces: Iterable[bytes], kind: str | None
    ) -> str | None:
        """Writes the response; ``truncate`` and ``stall`` stop it at a random byte inside a 2xx object body."""
        proxy = self.server.proxy
        length = next((int(v) for k, v in headers if k.lower() == "content-length"), 0)
        cuttable = 200 <= status < 300 and length >= 2 and _is_object_get(self.command, self.path)
        if kind == "truncate" and not cuttable:
            self._reset()  # nothing to cut: fail the request the plain way
            return "reset"
        if kind == "stall" and not cuttable:
            proxy._sleep(proxy.plan.stall_s)  # silent before the response
            self._close()
            return kind
        cut = proxy._cut_point(length) if kind in ("truncate", "stall") else None
        self._write_head(status, reason, headers)
        sent = 0
        for piece in pieces:
            if cut is not None and sent + len(piece) >= cut:
                self.wfile.write(piece[: cut - sent])
                if kind == "stall":
                    proxy._sleep(proxy.plan.stall_s)
                self._close()  # FIN: the client sees the body end early
                return kind
            self.wfile.write(piece)
            sent += len(piece)
        return kind


class FaultProxy:
    """The proxy in a background thread; a context manager.

    Args:
        upstream_url: The S3 server, ``http://host:port``.
        plan: What to inject; change it later with ``set_plan`` (e.g. no faults while a test writes its inputs).

    Attributes:
        endpoint_url: ``http://127.0.0.1:<port>``, for ``StorageConfig.s3_endpoint_url``.
    """

    def __init__(self, upstream_url: str, plan: FaultPlan | None = None) -> None:
        parts = urlsplit(upstream_url)
        if parts.scheme != "http" or parts.hostname is None or parts.port is None:
            raise ValueError(f"upstream must be http://host:port, got {upstream_url!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._injected: Counter[str] = Counter()
        self._requests: Counter[tuple[str, str]] = Counter()
        self._rng = random.Random(0)
        self._turn = 0
        self._stalls_left: int | None = 0
        self._connections: set[socket.socket] = set()
        self.set_plan(plan or FaultPlan())
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.proxy = self
        self._thread: threading.Thread | None = None
        self.endpoint_url = f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> "FaultProxy":
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    def start(self) -> "FaultProxy":
        """Starts serving in a daemon thread."""
        self._thread = threading.Thread(target=self._server.serve_forever, name="fault-proxy", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stops serving, ends stalls and closes idle keep-alive connections. Safe to call twice."""
        self._stop.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=10)
            self._thread = None
        self._server.server_close()
        with self._lock:
            open_connections, self._connections = list(self._connections), set()
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def drop_connections(self) -> int:
        """Shuts down every open client connection now, mid-response or idle; returns how many.

        A response being relayed ends early (the client sees the body end before its length); the handlers go on
        with the next requests on new connections as usual.
        """
        with self._lock:
            open_connections = list(self._connections)
        for connection in open_connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        return len(open_connections)

    def _track(self, connection: socket.socket, *, open_: bool) -> None:
        with self._lock:
            if open_:
                self._connections.add(connection)
            else:
                self._connections.discard(connection)

    def set_plan(self, plan: FaultPlan) -> None:
        """Replaces the plan (and reseeds the draw); counters are kept."""
        with self._lock:
            self.plan = plan
            self._rng = random.Random(plan.seed)
            self._turn = 0
            spent = self._injected["stall"]
            self._stalls_left = None if plan.max_stalls is None else max(0, plan.max_stalls - spent)

    def with_rate(self, rate: float) -> None:
        """Keeps the plan but changes its rate (``0`` switches faults off)."""
        self.set_plan(replace(self.plan, rate=rate))

    @property
    def injected(self) -> Counter[str]:
        """Faults really done, per kind (a copy)."""
        with self._lock:
            return Counter(self._injected)

    @property
    def requests(self) -> Counter[tuple[str, str]]:
        """Requests received, per ``(method, path without query)`` (a copy), faulted or not."""
        with self._lock:
            return Counter(self._requests)

    def _draw(self, method: str, path: str) -> str | None:
        """Notes the request and picks its fault (or None): kinds in turn, skipping ones that cannot apply."""
        with self._lock:
            self._requests[(method, path.split("?")[0])] += 1
            plan = self.plan
            if self._rng.random() >= plan.rate or (plan.methods and method not in plan.methods):
                return None
            if plan.path_suffixes and not path.split("?")[0].endswith(plan.path_suffixes):
                return None
            for _ in range(len(plan.kinds)):
                kind = plan.kinds[self._turn % len(plan.kinds)]
                self._turn += 1
                if kind == "truncate" and not _is_object_get(method, path):
                    continue
                if kind == "stall" and self._stalls_left is not None:
                    if self._stalls_left == 0:
                        continue
                    self._stalls_left -= 1
                return kind
            return None

    def _count(self, kind: str) -> None:
        with self._lock:
            self._injected[kind] += 1

    def _delay_s(self) -> float:
        with self._lock:
            return self._rng.uniform(*self.plan.delay_s)

    def _cut_point(self, total: int) -> int:
        """Where a truncated or stalled body stops: somewhere strictly inside it."""
        with self._lock:
            return self._rng.randint(1, total - 1)

    def _sleep(self, seconds: float) -> None:
        """Sleeps, but returns at once when the proxy stops."""
        self._stop.wait(seconds)


def wait_for(condition: Callable[[], bool], timeout_s: float = 5.0) -> bool:
    """Polls ``condition()`` until true or ``timeout_s`` passes (counters of a closing connection settle late)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False
