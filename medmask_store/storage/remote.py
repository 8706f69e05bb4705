"""Archives in object storage: URLs, and ranged reads that cost one request each.

``s3://bucket/path/archive.zarr`` (and ``s3a``, ``gs``, ``az`` / ``azure`` /
``abfs(s)``, read-only ``http(s)``) names an archive in an object store;
``file://`` names a local path. obstore (the Rust ``object_store`` crate) makes the
requests: one GET per metadata document, one suffix-range GET per shard index (the
object's size comes with it), and one batch of concurrent range GETs per read, in
which chunks less than 4 KiB apart in the shard are merged into one request (as
tensorstore merges them).

Credentials and endpoint come from ``storage_options`` (obstore's configuration keys,
e.g. ``endpoint``, ``access_key_id``, ``secret_access_key``, ``region``; client keys
such as ``allow_http`` and ``timeout`` go to its HTTP client), else from the
standard environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
``AWS_ENDPOINT_URL``, ``AWS_REGION``, ...). A plain-``http://`` endpoint is allowed
when one is given.
"""

from __future__ import annotations

import functools
import io
import json
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from urllib.parse import unquote, urlsplit

from medmask_store.errors import CorruptChunk, InvalidArchive, ReadOnlyArchive, StorageUnavailable
from medmask_store.storage.zarr_store import FileObject, ObjectTooLarge, StoredObject

SCHEMES = ("s3", "s3a", "gs", "az", "azure", "abfs", "abfss", "http", "https")
READ_ONLY_SCHEMES = ("http", "https")  # HTTP servers are read, never written
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT")
CREDENTIAL_VARIABLES = ("AWS_", "GOOGLE_", "AZURE_")  # the environment obstore configures stores from
# Ranges of one batch closer than this are fetched as one request: tensorstore's choice for remote stores
# (max_extra_read_bytes 4095), where a request costs more than 4 KiB of transfer.
MERGE_GAP = 4095
# obstore's HTTP client options (its ClientConfig); every other storage option configures the store.
CLIENT_OPTIONS = frozenset({
    "allow_http", "allow_invalid_certificates", "connect_timeout", "default_content_type", "default_headers",
    "http1_only", "http2_keep_alive_interval", "http2_keep_alive_timeout", "http2_keep_alive_while_idle",
    "http2_only", "pool_idle_timeout", "pool_max_idle_per_host", "proxy_url", "proxy_ca_certificate",
    "proxy_excludes", "root_certificate", "randomize_addresses", "read_timeout", "timeout", "user_agent",
})  # fmt: skip


@dataclass(frozen=True)
class RemoteLocation:
    """An archive in an object store: its URL and the options that reach it."""

    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict)

    @property
    def scheme(self) -> str:
        return self.url.split("://", 1)[0].lower()

    @property
    def name(self) -> str:
        """The last part of the URL's path, e.g. ``archive.zarr``."""
        return self.url.rstrip("/").rsplit("/", 1)[-1]

    @property
    def store(self) -> Any:
        """The obstore store rooted at the archive (keys are relative to it); one per URL and options in a
        process, so that every open of an archive shares its HTTP connections (as tensorstore's context does)."""
        environment = {k: v for k, v in os.environ.items() if k.startswith(CREDENTIAL_VARIABLES)}  # obstore reads them
        return _store(self.url.rstrip("/"), json.dumps([dict(self.storage_options), environment], sort_keys=True, default=str))

    def __str__(self) -> str:
        return self.url


@functools.lru_cache(maxsize=64)
def _store(url: str, options: str) -> Any:
    """An obstore store for a URL, its options and the credential variables (JSON), built once: ~10 ms each."""
    from obstore.store import from_url

    storage_options = json.loads(options)[0]
    config: Any = {k: v for k, v in storage_options.items() if k not in CLIENT_OPTIONS}
    client: Any = {k: v for k, v in storage_options.items() if k in CLIENT_OPTIONS}
    endpoint = str(config.get("endpoint") or next((os.environ[v] for v in ENDPOINT_VARIABLES if v in os.environ), ""))
    if url.startswith("http://") or endpoint.startswith("http://"):
        client.setdefault("allow_http", True)
    try:
        return from_url(url, config=config or None, client_options=client or None)
    except Exception as exc:  # obstore raises its own types for unknown keys and bad URLs
        raise InvalidArchive(f"{url}: cannot reach this store ({type(exc).__name__}: {exc})") from exc


def parse_location(
    path: str | os.PathLike[str] | RemoteLocation, storage_options: Mapping[str, Any] | None = None
) -> Path | RemoteLocation:
    """A local path, or the object-store location a URL names; an unsupported scheme is an error, never a path."""
    if isinstance(path, RemoteLocation):
        return path
    text = os.fspath(path)
    scheme = text.split("://", 1)[0].lower() if "://" in text else ""
    if not scheme:
        if storage_options:
            raise ValueError(f"storage_options apply to URLs such as s3://bucket/archive.zarr, not to the path {text}")
        return Path(text)
    if scheme == "file":
        parts = urlsplit(text)
        if parts.netloc not in ("", "localhost"):
            raise InvalidArchive(f"{text}: file:// URLs name local paths; this one names host {parts.netloc!r}")
        return Path(unquote(parts.path))
    if scheme not in SCHEMES:
        raise InvalidArchive(
            f"{text}: unsupported URL scheme {scheme!r}; use a local path, file://, or one of "
            f"{', '.join(s + '://' for s in SCHEMES)}"
        )
    return RemoteLocation(text, dict(storage_options or {}))


@contextmanager
def requests_to(name: str) -> Iterator[None]:
    """Requests about object ``name``: an absent object stays :class:`FileNotFoundError`; any other failure
    (credentials, endpoint, bucket, network) is a :class:`StorageUnavailable` naming the object."""
    try:
        yield
    except (FileNotFoundError, ObjectTooLarge):
        raise
    except Exception as exc:  # obstore's errors carry the HTTP status and the server's message
        detail = " ".join(str(exc).split())[:600]
        raise StorageUnavailable(f"{name}: the object store failed the request ({type(exc).__name__}: {detail})") from exc


class RemoteObject:
    """One object as a request found it (its size then); ranged reads, singly or in one batch."""

    def __init__(self, store: Any, key: str, name: str, size: int) -> None:
        self._store, self._key, self.name, self.size = store, key, name, size

    def _check(self, start: int, length: int) -> None:
        if start < 0 or length < 0 or start + length > self.size:
            raise CorruptChunk(f"{self.name}: {length} bytes at {start} lie beyond its end ({self.size} bytes)")

    def read(self, start: int, length: int) -> bytes:
        import obstore

        self._check(start, length)
        if not length:
            return b""
        with requests_to(self.name):
            return bytes(obstore.get_range(self._store, self._key, start=start, length=length))

    def close(self) -> None:
        """Nothing to release: every read is a request of its own."""

    def read_many(self, ranges: list[tuple[int, int]]) -> list[bytes]:
        """Many (start, length) ranges: concurrent requests, ranges less than ``MERGE_GAP`` bytes apart merged into one."""
        import obstore

        for start, length in ranges:
            self._check(start, length)
        wanted = [(start, length) for start, length in ranges if length]
        if not wanted:
            return [b""] * len(ranges)
        with requests_to(self.name):
            got = iter(obstore.get_ranges(
                self._store, self._key, starts=[s for s, _ in wanted], lengths=[n for _, n in wanted], coalesce=MERGE_GAP
            ))
        return [bytes(next(got)) if length else b"" for _, length in ranges]


class RemoteBytes:
    """The objects of an object store under the archive's URL (:class:`.zarr_store.ByteSource`), one request per call."""

    def __init__(self, location: RemoteLocation) -> None:
        self.location = location
        self._store = location.store

    def _name(self, key: str) -> str:
        return f"{self.location.url.rstrip('/')}/{key}"

    def open(self, key: str) -> RemoteObject | None:
        import obstore

        try:
            with requests_to(self._name(key)):
                size = obstore.head(self._store, key)["size"]
        except FileNotFoundError:
            return None
        return RemoteObject(self._store, key, self._name(key), size)

    def read_whole(self, key: str, limit: int | None = None) -> bytes | None:
        import obstore

        try:
            with requests_to(self._name(key)):
                result = obstore.get(self._store, key)
                if limit is not None and result.meta["size"] > limit:
                    raise ObjectTooLarge(result.meta["size"])  # refused before its body is read
                return bytes(result.bytes())
        except FileNotFoundError:
            return None

    def open_tail(self, key: str, length: int) -> tuple[RemoteObject, bytes] | None:
        import obstore

        try:
            with requests_to(self._name(key)):
                result = obstore.get(self._store, key, options={"range": {"suffix": length}})
                tail = bytes(result.bytes())
        except FileNotFoundError:
            return None
        return RemoteObject(self._store, key, self._name(key), result.meta["size"]), tail


# -- single-file archives (.zarr.zip, .h5, .msk) in object stores: read in place, by ranges --------------
FILE_READ_BUFFER = 1 << 20  # what zipfile's and HDF5's small reads of metadata are gathered into


def open_archive_file(path: Path | RemoteLocation, mode: str) -> StoredObject:
    """A single-file archive as ranged reads: a local file (``os.pread``) or an object (range GETs, mode 'r' only)."""
    if isinstance(path, Path):
        if not path.is_file():
            raise InvalidArchive(f"{path} does not exist (or is not a file); open it with mode 'a' or 'w' to create one")
        return FileObject(open(path, "rb", buffering=0), str(path))  # noqa: SIM115 - closed with the archive
    if mode != "r":
        raise ReadOnlyArchive(f"{path}: single-file archives in object stores are read-only; open it with mode 'r'")
    parent, name = path.url.rstrip("/").rsplit("/", 1)
    stored = RemoteBytes(RemoteLocation(parent, path.storage_options)).open(name)
    if stored is None:
        raise InvalidArchive(f"{path} does not exist")
    return stored


class RangedFile(io.RawIOBase):
    """A read-only file over a ranged-read object, for libraries that want a file (zipfile, h5py): wrap it
    in ``io.BufferedReader`` so that their small reads become few requests."""

    def __init__(self, stored: StoredObject) -> None:
        super().__init__()
        self._stored, self._position = stored, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._position

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._position, io.SEEK_END: self._stored.size}[whence]
        self._position = max(base + offset, 0)
        return self._position

    def readinto(self, buffer: Any) -> int:
        length = max(min(len(buffer), self._stored.size - self._position), 0)
        data = self._stored.read(self._position, length) if length else b""
        memoryview(buffer).cast("B")[:length] = data
        self._position += length
        return length


def as_file(stored: StoredObject) -> IO[bytes]:
    """A buffered file over an object (a local file's own handle where it has one)."""
    if isinstance(stored, FileObject):
        return stored.handle
    return io.BufferedReader(RangedFile(stored), FILE_READ_BUFFER)
