"""medmask_store: lossless, chunked archives of medical segmentation masks."""

from medmask_store.codecs import CrackleZstd, CrackleZstdCodec, PackBitsZstd, PackBitsZstdCodec
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
    ReadOnlyArchive,
)
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
    "ReadOnlyArchive",
    "SegmentationMask",
    "StorageSettings",
    "WorldBox",
]
