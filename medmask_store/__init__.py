"""medmask_store: lossless, chunked archives of medical segmentation masks."""

from typing import TYPE_CHECKING

from medmask_store.errors import (
    ArchiveClosed,
    ArchiveLocked,
    CaseExists,
    CaseNotFound,
    CorruptArchive,
    CorruptChunk,
    CorruptMetadata,
    DamagedDataWarning,
    InvalidArchive,
    InvalidCase,
    InvalidQuery,
    InvalidRegion,
    MaskStoreError,
    NiftiError,
    OrganNotFound,
    QueryWarning,
    ReadOnlyArchive,
)
from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.codecs import CrackleZstd, CrackleZstdCodec, PackBitsZstd, PackBitsZstdCodec
    from medmask_store.model import CaseData, CaseInfo, OrganStats
    from medmask_store.model.region import WorldBox
    from medmask_store.segmentation_mask import LabelMapping, SegmentationMask
    from medmask_store.storage import Case, MaskArchive, StorageSettings

__version__ = "0.1.0"

__all__ = [
    "ArchiveClosed",
    "ArchiveLocked",
    "Case",
    "CaseData",
    "CaseExists",
    "CaseInfo",
    "CaseNotFound",
    "CorruptArchive",
    "CorruptChunk",
    "CorruptMetadata",
    "CrackleZstd",
    "CrackleZstdCodec",
    "DamagedDataWarning",
    "InvalidArchive",
    "InvalidCase",
    "InvalidQuery",
    "InvalidRegion",
    "LabelMapping",
    "MaskArchive",
    "MaskStoreError",
    "NiftiError",
    "OrganNotFound",
    "OrganStats",
    "PackBitsZstd",
    "PackBitsZstdCodec",
    "QueryWarning",
    "ReadOnlyArchive",
    "SegmentationMask",
    "StorageSettings",
    "WorldBox",
]

# The rest is imported on first use: the command line and the codec entry points import this package.
__getattr__, __dir__ = lazy_exports(__name__, {
    "Case": "medmask_store.storage.case",
    "CaseData": "medmask_store.model.case_data",
    "CaseInfo": "medmask_store.model.attributes",
    "CrackleZstd": "medmask_store.codecs.crackle_zstd",
    "CrackleZstdCodec": "medmask_store.codecs.zarr3",
    "LabelMapping": "medmask_store.segmentation_mask",
    "MaskArchive": "medmask_store.storage.archive",
    "OrganStats": "medmask_store.model.stats",
    "PackBitsZstd": "medmask_store.codecs.packbits_zstd",
    "PackBitsZstdCodec": "medmask_store.codecs.zarr3",
    "SegmentationMask": "medmask_store.segmentation_mask",
    "StorageSettings": "medmask_store.storage.layout",
    "WorldBox": "medmask_store.model.region",
})
