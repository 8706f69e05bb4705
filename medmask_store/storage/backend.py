"""What a storage backend must do; everything else lives in the backend-neutral core."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from medmask_store.storage.chunked import ChunkedArray
from medmask_store.storage.layout import ArrayToWrite


class Backend(Protocol):
    """Moves case attributes and arrays between the core and one kind of store."""

    read_only: bool
    closed: bool
    # Directory archives take concurrent writers; their index may lag behind the cases
    # and is reconciled through version tokens. Single-file archives have one writer.
    concurrent_writers: bool

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

    def case_tokens(self) -> dict[str, str]:
        """Every case id with a token that changes when the case is rewritten ("" if untracked)."""
        ...

    def listing_version(self) -> str:
        """Changes whenever a case is added, replaced or deleted ("" where one writer keeps the index exact)."""
        ...

    def read_index(self) -> bytes | None:
        """The stored archive index, or None if there is none yet."""
        ...

    def update_index(self, build: Callable[[bytes | None], bytes]) -> None:
        """Replace the stored index by ``build(current)``, atomically and exclusively; b"" removes it."""
        ...

    def commit(self) -> None:
        """Make every write so far durable and visible to other processes."""
        ...

    def close(self) -> None: ...
