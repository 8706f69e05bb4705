"""Zarr v3 pieces shared by the directory and zip backends: case groups in any zarr Store."""

from __future__ import annotations

import zipfile
from typing import Any

import zarr
from zarr.abc.store import Store
from zarr.codecs import BytesCodec, Crc32cCodec, ZstdCodec
from zarr.errors import NodeNotFoundError

from medmask_store.codecs.zarr3 import PackBitsZstdCodec
from medmask_store.errors import CaseNotFound, InvalidArchive
from medmask_store.model.attributes import ARCHIVE_ATTRIBUTES, check_archive_attributes
from medmask_store.storage.backend import CheckedArray, StoredArray
from medmask_store.storage.layout import CASES_GROUP, ArrayToWrite, StorageSettings

COMPACT_JSON = {"json_indent": None}


def create_archive_root(store: Store) -> None:
    """The root group with the archive attributes, and the empty ``cases`` group."""
    with zarr.config.set(COMPACT_JSON):
        root = zarr.create_group(store, attributes=ARCHIVE_ATTRIBUTES, zarr_format=3)
        root.create_group(CASES_GROUP)


def check_archive_root(store: Store, where: object) -> None:
    try:
        attributes = zarr.open_group(store, mode="r").attrs.asdict()
    except NodeNotFoundError as exc:
        raise InvalidArchive(f"{where} is not a medmask_store archive (no root zarr.json)") from exc
    check_archive_attributes(attributes, where)


def write_case_group(store: Store, attributes: dict[str, Any], arrays: list[ArrayToWrite], settings: StorageSettings) -> None:
    """Write one case as the root group of ``store``: attributes, then each array as one shard."""
    with zarr.config.set(COMPACT_JSON):
        group = zarr.create_group(store, attributes=attributes, zarr_format=3)
        for array in arrays:
            shard = tuple(-(-size // chunk) * chunk for size, chunk in zip(array.data.shape, array.chunks))
            if array.is_binary:
                serializer: Any = PackBitsZstdCodec(level=settings.layer_level)
                compressors: list[Any] = [Crc32cCodec()]
            else:
                serializer = BytesCodec()
                compressors = [ZstdCodec(level=settings.label_level), Crc32cCodec()]
            stored = group.create_array(
                array.name,
                shape=array.data.shape,
                dtype=array.data.dtype,
                chunks=array.chunks,
                shards=shard,
                serializer=serializer,
                compressors=compressors,
                fill_value=0,
                dimension_names=array.dimension_names,
                config={"write_empty_chunks": False},
            )
            stored[...] = array.data


class ZarrCaseReader:
    """Reads case groups under ``cases/`` of a zarr Store (directory or zip)."""

    def __init__(self, store: Store, where: object) -> None:
        self._store = store
        self._where = where

    def read_case_attributes(self, case_id: str) -> dict[str, Any]:
        try:
            group = zarr.open_group(self._store, path=f"{CASES_GROUP}/{case_id}", mode="r")
        except NodeNotFoundError as exc:
            raise CaseNotFound(f"no case {case_id!r} in {self._where}") from exc
        return group.attrs.asdict()

    def open_array(self, case_id: str, name: str) -> StoredArray | None:
        path = f"{CASES_GROUP}/{case_id}/{name}"
        try:
            array = zarr.open_array(self._store, path=path, mode="r")
        except NodeNotFoundError:
            return None
        failures = (ValueError, zipfile.BadZipFile)  # checksum mismatches (crc32c, zip member CRC)
        return CheckedArray(array, f"{self._where}/{path}", failures)  # type: ignore[arg-type]
