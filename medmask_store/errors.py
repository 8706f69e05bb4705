"""Exceptions raised by medmask_store; all derive from :class:`MaskStoreError`."""

from __future__ import annotations


class MaskStoreError(Exception):
    """Base class of every error medmask_store raises on purpose."""


class InvalidCase(MaskStoreError, ValueError):
    """A case's input (masks, labels, mapping, space, id, metadata) is invalid."""


class InvalidArchive(MaskStoreError):
    """A path is not a medmask_store archive, or its format is unsupported."""


class ReadOnlyArchive(MaskStoreError, PermissionError):
    """A write was attempted on an archive opened with mode ``"r"``."""


class CaseNotFound(MaskStoreError, KeyError):
    """No case with the requested id exists in the archive."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CaseExists(MaskStoreError, FileExistsError):
    """A case id is already present and ``overwrite`` was not requested."""


class OrganNotFound(MaskStoreError, KeyError):
    """A case has no organ of the requested name."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class CorruptArchive(MaskStoreError, ValueError):
    """Stored bytes are damaged, missing or inconsistent: the archive cannot be trusted where they are used."""


class CorruptChunk(CorruptArchive):
    """Stored chunk bytes fail their checksum or do not decode to the expected chunk."""


class CorruptMetadata(CorruptArchive):
    """Metadata (attributes, array manifest, chunk list, listing, index) fails its checksum or its checks."""


class NiftiError(MaskStoreError, ValueError):
    """A NIfTI input cannot be imported losslessly (geometry, values, label map)."""


class SlicerError(MaskStoreError, ValueError):
    """A 3D Slicer ``.seg.nrrd`` cannot be imported (not a segmentation, geometry, segments, voxels) or written."""


class OmeZarrError(MaskStoreError, ValueError):
    """An OME-Zarr input cannot be imported (not an NGFF image, no or several label images, axes, transforms)."""


class OutputExists(MaskStoreError, FileExistsError):
    """An export's output path exists and overwriting it was not requested."""


class DicomSegError(MaskStoreError, ValueError):
    """A DICOM SEG cannot be imported, or a case cannot be exported as one (CT series missing or mismatched)."""


class ArchiveClosed(MaskStoreError):
    """A case was read after its archive was closed."""


class ArchiveLocked(MaskStoreError):
    """Another process is writing this single-file archive."""


class InvalidRegion(MaskStoreError, ValueError):
    """A voxel or world region is malformed, empty, or outside the volume."""


class InvalidQuery(MaskStoreError, ValueError):
    """A query expression is malformed, unsafe, or names unknown organs or fields."""


class StorageUnavailable(MaskStoreError, OSError):
    """An object store refused or failed a request (credentials, endpoint, bucket, network)."""


class DamagedDataWarning(UserWarning):
    """A damaged case or index was skipped (``skip_damaged=True``) or rebuilt by a writer."""


class QueryWarning(UserWarning):
    """A query compares with a value no case holds, or leaves out cases whose metadata has another type."""
