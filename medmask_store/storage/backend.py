"""What a storage backend must do; everything else lives in the backend-neutral core."""

from __future__ import annotations

from typing import Any, Protocol

from medmask_store.storage.chunked import ChunkedArray
from medmask_store.storage.layout import ArrayToWrite


class Backend(Protocol):
    """Moves case attributes and arrays between the core and one kind of store."""

    read_only: bool
    closed: bool

    def case_ids(self) -> list[str]: ...

    def read_case_attributes(self, case_id: str) -> dict[str, Any]:
        """The case's attributes; raises :class:`CaseNotFound` if absent."""
        ...

    def open_array(self, case_id: str, name: str) -> ChunkedArray | None:
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
