"""Storage: the backend-neutral archive core and one thin adapter per backend."""

from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.case import Case
from medmask_store.storage.layout import StorageSettings

__all__ = ["Case", "MaskArchive", "StorageSettings"]
