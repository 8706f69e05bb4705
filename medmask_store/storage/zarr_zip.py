"""Single-file Zarr v3 backend: the directory layout inside one ``.zarr.zip`` (stored, not deflated).

Read-only archives are read in place through zarr's ``ZipStore``. Writers edit
an extracted working copy with the directory backend and publish it as a new
zip on commit (see :mod:`.single_file`).
"""

from __future__ import annotations

import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from zarr.storage import ZipStore

from medmask_store.errors import InvalidArchive, ReadOnlyArchive
from medmask_store.storage.layout import CASES_GROUP, StorageSettings
from medmask_store.storage.single_file import SingleFileEditor
from medmask_store.storage.zarr_directory import ZarrDirectoryBackend
from medmask_store.storage.zarr_store import ZarrCaseReader, check_archive_root


def open_zarr_zip(path: Path, mode: str, settings: StorageSettings) -> ZarrZipReader | ZarrZipWriter:
    return ZarrZipReader(path) if mode == "r" else ZarrZipWriter(path, mode, settings)


def _open_zip_store(path: Path) -> ZipStore:
    if not zipfile.is_zipfile(path):
        raise InvalidArchive(f"{path} is not a zip file")
    store = ZipStore(path, mode="r")
    check_archive_root(store, path)
    return store


def stored_member_offset(handle: BinaryIO, info: zipfile.ZipInfo) -> int:
    """Where a member's bytes start in the zip file (after its local header)."""
    handle.seek(info.header_offset)
    name_length, extra_length = struct.unpack("<HH", handle.read(30)[26:30])
    return info.header_offset + 30 + name_length + extra_length


def _extract_without_crc_check(path: Path, destination: Path) -> None:
    """Extract stored members byte for byte: a corrupt chunk is caught later by its own crc32c,
    so an archive with one bad case can still be opened to delete or replace it."""
    with zipfile.ZipFile(path) as archive, open(path, "rb") as handle:
        for info in archive.infolist():
            if info.is_dir():
                continue
            if info.compress_type != zipfile.ZIP_STORED:
                archive.extract(info, destination)
                continue
            target = destination / info.filename
            target.parent.mkdir(parents=True, exist_ok=True)
            handle.seek(stored_member_offset(handle, info))
            target.write_bytes(handle.read(info.file_size))


class ZarrZipReader(ZarrCaseReader):
    """Read-only access to a ``.zarr.zip`` archive."""

    read_only = True

    def __init__(self, path: Path) -> None:
        self.closed = False
        if not path.exists():
            raise InvalidArchive(f"{path} does not exist")
        super().__init__(_open_zip_store(path), path)
        prefix = f"{CASES_GROUP}/"
        self._case_ids = sorted(
            name[len(prefix) : -len("/zarr.json")]
            for name in zipfile.ZipFile(path).namelist()
            if name.startswith(prefix) and name.endswith("/zarr.json") and name.count("/") == 2
        )

    def case_ids(self) -> list[str]:
        return list(self._case_ids)

    def write_case(self, *args: object, **kwargs: object) -> None:
        raise ReadOnlyArchive(f"{self._where} is open read-only (mode 'r')")

    delete_case = write_case

    def commit(self) -> None:
        """Nothing to commit in mode 'r'."""

    def close(self) -> None:
        self.closed = True
        self._store.close()


class ZarrZipWriter(ZarrDirectoryBackend):
    """Edits an extracted working copy; ``commit`` publishes it as the new zip."""

    def __init__(self, path: Path, mode: str, settings: StorageSettings) -> None:
        self._editor = SingleFileEditor(path, mode, ".zarr")
        try:
            if path.exists():
                _open_zip_store(path).close()  # refuse to replace or extend anything but an archive
                if mode != "w":
                    _extract_without_crc_check(path, self._editor.working)
            super().__init__(self._editor.working, "a", settings)
        except BaseException:
            self._editor.close()
            raise
        self.archive_path = path
        self._dirty = not path.exists() or mode == "w"

    def write_case(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        super().write_case(*args, **kwargs)  # type: ignore[arg-type]
        self._dirty = True

    def delete_case(self, case_id: str) -> None:
        super().delete_case(case_id)
        self._dirty = True

    def commit(self) -> None:
        if self._dirty:
            self._editor.publish(self._write_zip)
            self._dirty = False

    def _write_zip(self, destination: Path) -> None:
        with zipfile.ZipFile(destination, "w", compression=zipfile.ZIP_STORED) as archive:
            for path in sorted(self.path.rglob("*")):
                relative = path.relative_to(self.path)
                if path.is_file() and not relative.parts[0].startswith("."):
                    archive.write(path, relative.as_posix())

    def close(self) -> None:
        try:
            super().close()
        finally:
            self._editor.close()
