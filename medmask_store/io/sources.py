"""Turn import sources (case folders, multi-label files, .seg.nrrd, DICOM SEG, OME-Zarr, folders of cases) into cases."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from medmask_store.errors import NiftiError
from medmask_store.io.formats import case_id_of, single_case_loader
from medmask_store.io.labels import LabelSource, LabelTable, load_labels
from medmask_store.io.nifti import (
    folder_values,
    is_nifti,
    load_mask_folder,
    load_multilabel,
    multilabel_table,
    nifti_stem,
)
from medmask_store.model.case_data import CaseData, Unmapped


@dataclass(frozen=True)
class CaseSource:
    """One case to import: its id and how to load it."""

    case_id: str
    path: Path
    load: Callable[[], CaseData]


def discover_cases(
    source: str | Path,
    labels: LabelSource | None = None,
    unmapped: Unmapped = "error",
) -> list[CaseSource]:
    """The cases in ``source``; the case id is the folder name or file stem.

    ``source`` is a folder of binary masks (one case), a multi-label NIfTI file
    (label table from ``labels``, else a ``<stem>.json`` beside it, else its
    header), a 3D Slicer ``.seg.nrrd`` or DICOM SEG file or an OME-Zarr image
    (they name their organs: ``labels`` is not used), or a folder of such cases
    and of case folders. ``labels`` also numbers the
    organs of mask folders (see :func:`~medmask_store.io.nifti.folder_values`).
    Only folders are listed and label tables read here: the files are checked
    when a case is loaded, so that a resumed import skips cases already stored
    without opening their files, and one bad case fails alone.
    """
    source = Path(source)
    table = None if labels is None else load_labels(labels)
    if is_nifti(source):
        table = multilabel_table(source, table)
        return [CaseSource(nifti_stem(source), source, partial(load_multilabel, source, table, unmapped=unmapped))]
    if (load := single_case_loader(source)) is not None:
        return [CaseSource(case_id_of(source), source, load)]
    if source.is_file():
        raise NiftiError(f"{source}: not a NIfTI, .seg.nrrd or DICOM SEG file")
    if not source.is_dir():
        raise NiftiError(f"{source}: neither a file nor a folder")
    if has_masks(source):
        return [case_folder_source(source, table, unmapped)]
    cases = []
    for path in sorted(source.iterdir()):
        if (load := single_case_loader(path)) is not None:
            cases.append(CaseSource(case_id_of(path), path, load))
        elif path.is_dir() and has_masks(path):
            cases.append(case_folder_source(path, table, unmapped))
    if not cases:
        raise NiftiError(
            f"{source}: holds no .nii.gz masks, no case folders with masks and no .seg.nrrd, DICOM SEG or OME-Zarr cases"
        )
    return cases


def case_folder_source(folder: Path, table: LabelTable | None = None, unmapped: Unmapped = "error") -> CaseSource:
    """A folder of binary masks as one case (with a table, once its organ names passed the checks)."""
    if table is not None:
        folder_values(folder, table, unmapped)
    return CaseSource(folder.name, folder, partial(load_mask_folder, folder, labels=table, unmapped=unmapped))


def has_masks(folder: Path) -> bool:
    """Whether a folder holds a NIfTI file (stops at the first)."""
    return any(is_nifti(path) for path in folder.iterdir())
