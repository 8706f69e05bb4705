"""What a storage backend must do; everything else lives in the backend-neutral core."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np

from medmask_store.storage.layout import ArrayToWrite


class StoredArray(Protocol):
    """A chunked array on disk; indexing reads only the chunks a selection touches."""

    shape: tuple[int, ...]
    dtype: np.dtype

    def __getitem__(self, selection: Any) -> np.ndarray: ...


class Backend(Protocol):
    """Moves case attributes and arrays between the core and one kind of store."""

    read_only: bool

    def case_ids(self) -> list[str]: ...

    def read_case_attributes(self, case_id: str) -> dict[str, Any]: ...

    def open_array(self, case_id: str, name: str) -> StoredArray | None:
        """The named array of a case, or None when the case does not store it."""
        ...

    def write_case(
        self, case_id: str, attributes: dict[str, Any], arrays: list[ArrayToWrite], overwrite: bool
    ) -> None:
        """Write a whole case atomically: afterwards it is listed complete or not at all."""
        ...

    def delete_case(self, case_id: str) -> None: ...

    def close(self) -> None: ...
