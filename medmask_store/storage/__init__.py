"""Storage: the backend-neutral archive core and one thin adapter per backend."""

from typing import TYPE_CHECKING

from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.case import Case
    from medmask_store.storage.layout import StorageSettings

__all__ = ["Case", "MaskArchive", "StorageSettings"]

# Imported on first use, so that importing one backend module does not import them all.
__getattr__, __dir__ = lazy_exports(__name__, {
    "Case": "medmask_store.storage.case",
    "MaskArchive": "medmask_store.storage.archive",
    "StorageSettings": "medmask_store.storage.layout",
})
