"""What a storage backend must do; everything else lives in the backend-neutral core."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from medmask_store.errors import CorruptChunk
from medmask_store.storage.layout import ArrayToWrite


class StoredArray(Protocol):
    """A chunked array on disk; indexing reads only the chunks a selection touches."""

    @property
    def shape(self) -> tuple[int, ...]: ...

    @property
    def dtype(self) -> np.dtype: ...

    def __getitem__(self, selection: Any) -> np.ndarray: ...


class CheckedArray:
    """Wraps a library array so that its checksum/decode failures raise :class:`CorruptChunk`."""

    def __init__(self, array: StoredArray, where: str, failures: tuple[type[Exception], ...]) -> None:
        self._array = array
        self._where = where
        self._failures = failures

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._array.shape)

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self._array.dtype)

    def __getitem__(self, selection: Any) -> np.ndarray:
        try:
            return np.asarray(self._array[selection])
        except CorruptChunk as exc:
            raise CorruptChunk(f"{self._where}: {exc}") from exc
        except self._failures as exc:
            raise CorruptChunk(f"{self._where}: a stored chunk failed its checksum or decoding ({exc})") from exc


class Backend(Protocol):
    """Moves case attributes and arrays between the core and one kind of store."""

    read_only: bool
    closed: bool

    def case_ids(self) -> list[str]: ...

    def read_case_attributes(self, case_id: str) -> dict[str, Any]:
        """The case's attributes; raises :class:`CaseNotFound` if absent."""
        ...

    def open_array(self, case_id: str, name: str) -> StoredArray | None:
        """The named array of a case, or None when the case does not store it."""
        ...

    def write_case(
        self, case_id: str, attributes: dict[str, Any], arrays: list[ArrayToWrite], overwrite: bool
    ) -> None:
        """Write a whole case: afterwards it is listed complete, or not at all."""
        ...

    def delete_case(self, case_id: str) -> None: ...

    def commit(self) -> None:
        """Make every write so far durable and visible to other processes."""
        ...

    def close(self) -> None: ...
