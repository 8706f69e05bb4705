"""Single-file Zarr v3 backend: the directory layout inside one ``.zarr.zip`` (stored, not deflated).

Read-only archives are read in place (members are stored, so chunks are byte ranges of the file). Writers edit
an extracted working copy with the directory backend and publish it as a new
zip on commit (see :mod:`.single_file`).
"""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

from medmask_store.errors import CaseNotFound, CorruptMetadata, InvalidArchive, ReadOnlyArchive
from medmask_store.storage.layout import CASES_GROUP, INDEX_FOLDER, StorageSettings
from medmask_store.storage.remote import RemoteLocation, as_file, open_archive_file
from medmask_store.storage.single_file import SingleFileEditor, SingleWriter
from medmask_store.storage.zarr_directory import ZarrDirectoryBackend
from medmask_store.storage.zarr_store import PrefixBytes, ZarrCaseReader, ZipBytes, check_archive_root


def open_zarr_zip(path: Path | RemoteLocation, mode: str, settings: StorageSettings) -> ZarrZipReader | ZarrZipWriter:
    if mode == "r":
        return ZarrZipReader(path)
    if isinstance(path, RemoteLocation):
        raise ReadOnlyArchive(f"{path}: single-file archives in object stores are read-only; open it with mode 'r'")
    return ZarrZipWriter(path, mode, settings)


def _open_zip(path: Path | RemoteLocation) -> ZipBytes:
    try:
        source = ZipBytes(open_archive_file(path, "r"))
    except CorruptMetadata:  # the directory is read once: whether it is a zip at all is asked only on failure
        if not _is_zip(path):
            raise InvalidArchive(f"{path} is not a zip file") from None
        raise
    try:
        check_archive_root(source, path)
    except BaseException:
        source.close()
        raise
    return source


def _is_zip(path: Path | RemoteLocation) -> bool:
    file = open_archive_file(path, "r")
    try:
        return zipfile.is_zipfile(as_file(file))
    finally:
        file.close()


def _extract_without_crc_check(path: Path, destination: Path) -> None:
    """Extract every member byte for byte: a corrupt chunk is caught later by its own crc32c,
    so an archive with one bad case can still be opened to delete or replace it. Member names
    that would leave ``destination`` (``..``, absolute paths, empty parts) are refused first."""
    source = ZipBytes(open_archive_file(path, "r"))
    try:
        for name in source.names:
            parts = name.rstrip("/").split("/")
            if any(part in ("", ".", "..") or "\\" in part or "\0" in part for part in parts):
                raise CorruptMetadata(f"{path}: member name {name[:200]!r} would be extracted outside the archive")
            member = source.open(name)
            if name.endswith("/") or member is None:
                continue
            target = destination.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(member.read(0, member.size))
    finally:
        source.close()


class ZarrZipReader(SingleWriter, ZarrCaseReader):
    """Read-only access to a ``.zarr.zip`` archive."""

    read_only = True

    def __init__(self, path: Path | RemoteLocation) -> None:
        self.closed = False
        source = self._zip = _open_zip(path)
        super().__init__(source, path)
        # Every case with any member is listed: a case whose zarr.json was lost is damaged, not absent.
        prefix = f"{CASES_GROUP}/"
        inside = [name[len(prefix) :] for name in source.names if name.startswith(prefix)]
        self._case_ids = sorted({rest.split("/")[0] for rest in inside if "/" in rest})

    def case_ids(self) -> list[str]:
        return list(self._case_ids)

    def index_blob_names(self) -> list[str]:
        prefix = f"{INDEX_FOLDER}/"
        return sorted(name[len(prefix) :] for name in self._zip.names if name.startswith(prefix) and not name.endswith("/"))

    def _case_source(self, case_id: str) -> PrefixBytes:
        if case_id not in self._case_ids:
            raise CaseNotFound(f"no case {case_id!r} in {self._where}")
        return PrefixBytes(self._source, f"{CASES_GROUP}/{case_id}/")

    def write_case(self, *args: object, **kwargs: object) -> None:
        raise ReadOnlyArchive(f"{self._where} is open read-only (mode 'r')")

    delete_case = write_case
    update_index = write_case

    def commit(self) -> None:
        """Nothing to commit in mode 'r'."""

    def close(self) -> None:
        self.closed = True
        self._zip.close()


class ZarrZipWriter(SingleWriter, ZarrDirectoryBackend):
    """Edits an extracted working copy; ``commit`` publishes it as the new zip."""

    _editor: SingleFileEditor

    def update_index(self, build: Callable[[], tuple[dict[str, bytes], list[str]]]) -> None:
        super().update_index(build)
        self._dirty = True

    def __init__(self, path: Path, mode: str, settings: StorageSettings) -> None:
        self._editor = SingleFileEditor(path, mode, ".zarr")
        try:
            if path.exists():
                _open_zip(path).close()  # refuse to replace or extend anything but an archive
                if mode != "w":
                    _extract_without_crc_check(path, self._editor.working)
            super().__init__(self._editor.working, "a", settings)
        except BaseException:
            self._editor.close()
            raise
        self._dirty = not path.exists() or mode == "w"

    def write_case(self, *args: object, **kwargs: object) -> None:  # type: ignore[override]
        super().write_case(*args, **kwargs)  # type: ignore[arg-type]
        self._dirty = True

    def delete_case(self, case_id: str) -> None:
        super().delete_case(case_id)
        self._dirty = True

    def _write_snapshot(self, destination: Path) -> None:
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
