"""Synthetic CT series for DICOM SEG tests and benchmarks: one single-frame CT image per slice of a Space.

``write_ct_series(space, folder)`` writes ``slice_<k>.dcm`` for every k index of
``space``: the image's columns follow the Space's first axis and its rows the
second (DICOM's row and column directions), slice k lies at
``origin + k * spacing[2] * z`` in patient (LPS) coordinates, as
:func:`medmask_store.model.geometry.lps_affine` places it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid
from pydicom.valuerep import format_number_as_ds
from spacetransformer import Space

from medmask_store.model.geometry import lps_affine


def write_ct_series(
    space: Space,
    folder: Path,
    hounsfield: np.ndarray | None = None,
    study_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
) -> list[Path]:
    """Write one CT slice per k index of ``space`` into ``folder``; the files, in k order.

    ``hounsfield`` (int16, the Space's shape) gives the voxels; by default every voxel is -1000 (air).
    """
    folder.mkdir(parents=True, exist_ok=True)
    affine = lps_affine(space)
    shared = _series_dataset(space, affine, study_uid or generate_uid(), frame_of_reference_uid or generate_uid())
    paths = []
    for k in range(space.shape[2]):
        plane = np.full(space.shape[1::-1], -1000, np.int16) if hounsfield is None else hounsfield[:, :, k].T
        path = folder / f"slice_{k:04d}.dcm"
        _slice_dataset(shared, affine, k, plane).save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def _series_dataset(space: Space, affine: np.ndarray, study_uid: str, frame_of_reference_uid: str) -> Dataset:
    """The attributes every slice of the series shares."""
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.Modality = "CT"
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Phantom^Synthetic", "PHANTOM", "", "O"
    ds.StudyInstanceUID, ds.StudyID, ds.StudyDate, ds.StudyTime = study_uid, "1", "20240101", "120000"
    ds.AccessionNumber, ds.ReferringPhysicianName = "", ""
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 1
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = frame_of_reference_uid, ""
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    x_dir, y_dir = (affine[:3, axis] / space.spacing[axis] for axis in (0, 1))
    ds.ImageOrientationPatient = [*_ds(x_dir), *_ds(y_dir)]
    ds.PixelSpacing = _ds([space.spacing[1], space.spacing[0]])  # between rows (along y), between columns (along x)
    ds.SliceThickness = _ds([space.spacing[2]])[0]
    ds.Rows, ds.Columns = space.shape[1], space.shape[0]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = 0, 1, "HU"
    return ds


def _slice_dataset(shared: Dataset, affine: np.ndarray, k: int, plane: np.ndarray) -> Dataset:
    """Slice ``k`` of the series: its position, numbers, UID and voxels."""
    ds = Dataset()
    ds.update(shared)
    ds.SOPInstanceUID = generate_uid()
    ds.InstanceNumber = k + 1
    ds.ImagePositionPatient = _ds(affine[:3, 3] + k * affine[:3, 2])
    ds.PixelData = np.ascontiguousarray(plane, dtype="<i2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return ds


def _ds(values: np.ndarray | list[float]) -> list[str]:
    """Decimal strings as precise as DICOM's 16 characters allow."""
    return [format_number_as_ds(float(v)) for v in values]
