"""Zarr v3 directory-store backend.

Layout::

    archive.zarr/
      zarr.json                      root group; attributes name the format
      cases/zarr.json
      cases/<case_id>/zarr.json      case attributes (Space, mapping, stats, meta)
      cases/<case_id>/label_volume/  uint8|uint16, one shard of 64^3 Zstd chunks
      cases/<case_id>/binary_layers/ bool (layer, i, j, k), one shard of
                                     (1, 64, 64, 64) PackBits+Zstd chunks
      .staging/                      cases being written (not part of the archive)

Every inner chunk carries a crc32c checksum; empty chunks are not stored.  A
case is written under ``.staging/`` and renamed into ``cases/`` in one
``rename`` call, so a killed writer leaves it absent, never half-listed.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import zarr
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.storage import LocalStore

from medmask_store.codecs.zarr3 import PackBitsZstdCodec
from medmask_store.errors import CaseExists, CaseNotFound, InvalidArchive
from medmask_store.model.attributes import ATTRIBUTE_KEY, FORMAT_VERSION
from medmask_store.storage.backend import StoredArray
from medmask_store.storage.layout import CASES_GROUP, ArrayToWrite, StorageSettings

STAGING = ".staging"
ROOT_ATTRIBUTES = {ATTRIBUTE_KEY: {"format_version": FORMAT_VERSION, "kind": "archive"}}
COMPACT_JSON = {"json_indent": None}


class ZarrDirectoryBackend:
    """Cases as Zarr v3 groups under ``<path>/cases``."""

    def __init__(self, path: Path, mode: str, settings: StorageSettings) -> None:
        self.path = path
        self.read_only = mode == "r"
        self.settings = settings
        if path.exists() and not path.is_dir():
            raise InvalidArchive(f"{path} is a file, not a Zarr directory archive")
        exists = (path / "zarr.json").exists()
        if mode in ("r", "r+") and not exists:
            raise InvalidArchive(f"{path} is not a medmask_store archive (no zarr.json); open it with mode 'a' or 'w' to create one")
        if mode == "w-" and path.exists():
            raise InvalidArchive(f"{path} already exists; mode 'w-' creates new archives only")
        if mode == "w" and exists:
            self._check_format()  # replace archives only, never other folders
            shutil.rmtree(path)
            exists = False
        if not exists:
            self._create()
        self._check_format()
        self._store = LocalStore(path, read_only=self.read_only)
        if not self.read_only:
            self._remove_abandoned_staging()

    def _create(self) -> None:
        if self.path.exists() and any(self.path.iterdir()):
            raise InvalidArchive(f"{self.path} exists and is not a medmask_store archive; refusing to write into it")
        with zarr.config.set(COMPACT_JSON):
            root = zarr.create_group(LocalStore(self.path), attributes=ROOT_ATTRIBUTES, zarr_format=3)
            root.create_group(CASES_GROUP)

    def _check_format(self) -> None:
        attributes = zarr.open_group(LocalStore(self.path, read_only=True), mode="r").attrs.asdict()
        content = attributes.get(ATTRIBUTE_KEY)
        if not isinstance(content, dict) or content.get("kind") != "archive":
            raise InvalidArchive(f"{self.path} is a Zarr group but not a medmask_store archive")
        if content.get("format_version") != FORMAT_VERSION:
            raise InvalidArchive(
                f"{self.path} has format version {content.get('format_version')!r}; "
                f"this medmask_store reads version {FORMAT_VERSION}"
            )

    # -- reading ---------------------------------------------------------
    def _case_dir(self, case_id: str) -> Path:
        return self.path / CASES_GROUP / case_id

    def case_ids(self) -> list[str]:
        with os.scandir(self.path / CASES_GROUP) as entries:
            return sorted(e.name for e in entries if e.is_dir() and not e.name.startswith("."))

    def read_case_attributes(self, case_id: str) -> dict[str, Any]:
        if not (self._case_dir(case_id) / "zarr.json").exists():
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        return zarr.open_group(self._store, path=f"{CASES_GROUP}/{case_id}", mode="r").attrs.asdict()

    def open_array(self, case_id: str, name: str) -> StoredArray | None:
        if not (self._case_dir(case_id) / name / "zarr.json").exists():
            return None
        return zarr.open_array(self._store, path=f"{CASES_GROUP}/{case_id}/{name}", mode="r")  # type: ignore[return-value]

    # -- writing ---------------------------------------------------------
    def write_case(
        self, case_id: str, attributes: dict[str, Any], arrays: list[ArrayToWrite], overwrite: bool
    ) -> None:
        staging = self._staging_path("new", case_id)
        staging.mkdir(parents=True)
        try:
            with zarr.config.set(COMPACT_JSON):
                group = zarr.create_group(LocalStore(staging), attributes=attributes, zarr_format=3)
                for array in arrays:
                    self._write_array(group, array)
            self._commit(staging, case_id, overwrite)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    def _write_array(self, group: zarr.Group, array: ArrayToWrite) -> None:
        chunks = array.chunks
        shard = tuple(-(-size // chunk) * chunk for size, chunk in zip(array.data.shape, chunks))
        if array.is_binary:
            serializer: Any = PackBitsZstdCodec(level=self.settings.layer_level)
            compressors: list[Any] = [Crc32cCodec()]
        else:
            serializer = BytesCodec()
            compressors = [ZstdCodec(level=self.settings.label_level), Crc32cCodec()]
        stored = group.create_array(
            array.name,
            shape=array.data.shape,
            dtype=array.data.dtype,
            chunks=chunks,
            shards=shard,
            serializer=serializer,
            compressors=compressors,
            fill_value=0,
            dimension_names=array.dimension_names,
            config={"write_empty_chunks": False},
        )
        stored[...] = array.data

    def _commit(self, staging: Path, case_id: str, overwrite: bool) -> None:
        target = self._case_dir(case_id)
        replaced = None
        if target.exists():
            if not overwrite:
                raise CaseExists(f"case {case_id!r} already exists in {self.path}; pass overwrite=True to replace it")
            replaced = self._staging_path("replaced", case_id)
            os.rename(target, replaced)
        try:
            os.rename(staging, target)
        except OSError as exc:
            raise CaseExists(f"case {case_id!r} was written concurrently by another process") from exc
        if replaced is not None:
            shutil.rmtree(replaced)

    def delete_case(self, case_id: str) -> None:
        target = self._case_dir(case_id)
        if not target.exists():
            raise CaseNotFound(f"no case {case_id!r} in {self.path}")
        trash = self._staging_path("deleted", case_id)
        trash.parent.mkdir(exist_ok=True)
        os.rename(target, trash)
        shutil.rmtree(trash)

    def _staging_path(self, purpose: str, case_id: str) -> Path:
        """A unique folder recording the owning process, host, purpose and case."""
        return self.path / STAGING / f"{os.getpid()}@{socket.gethostname()}@{purpose}-{uuid.uuid4().hex}@{case_id}"

    def _remove_abandoned_staging(self) -> None:
        """Clean up after writers on this host that died mid-write.

        A case being replaced is moved aside before its successor is renamed in;
        if the writer died between the two renames the old case is restored,
        so an overwrite leaves the old or the new case, never neither.
        """
        staging_root = self.path / STAGING
        if not staging_root.exists():
            return
        host = socket.gethostname()
        for entry in staging_root.iterdir():
            parts = entry.name.split("@", 3)
            if len(parts) != 4 or parts[1] != host or not parts[0].isdigit() or _process_alive(int(parts[0])):
                continue
            purpose, case_id = parts[2].split("-")[0], parts[3]
            if purpose == "replaced" and not self._case_dir(case_id).exists():
                os.rename(entry, self._case_dir(case_id))
            else:
                shutil.rmtree(entry, ignore_errors=True)

    def close(self) -> None:
        self._store.close()


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
