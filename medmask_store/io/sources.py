"""Turn import sources (case folders, multi-label files, folders of cases) into cases."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from medmask_store.errors import NiftiError
from medmask_store.io.nifti import (
    is_nifti,
    load_label_map,
    load_mask_folder,
    load_multilabel,
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
    label_map: Mapping[str, int] | Path | None = None,
    unmapped: Unmapped = "error",
) -> list[CaseSource]:
    """The cases in ``source``; the case id is the folder name or file stem.

    ``source`` is a folder of binary masks (one case), a multi-label NIfTI file
    (label map from ``label_map`` or a ``<stem>.json`` beside it), or a folder
    whose sub-folders are case folders. Only folders are listed and label maps
    read here: the files are checked when a case is loaded, so that a resumed
    import skips cases already stored without opening their files, and one bad
    case fails alone.
    """
    source = Path(source)
    if is_nifti(source):
        labels = label_map if label_map is not None else source.with_name(nifti_stem(source) + ".json")
        if isinstance(labels, Path):
            if not labels.exists():
                raise NiftiError(f"{source}: a multi-label file needs a label map (--labels map.json or {labels.name} beside it)")
            labels = load_label_map(labels)
        return [CaseSource(nifti_stem(source), source, partial(load_multilabel, source, labels, unmapped=unmapped))]
    if not source.is_dir():
        raise NiftiError(f"{source}: neither a NIfTI file nor a folder")
    if has_masks(source):
        return [case_folder_source(source)]
    case_folders = sorted(p for p in source.iterdir() if p.is_dir() and has_masks(p))
    if not case_folders:
        raise NiftiError(f"{source}: holds no .nii.gz masks and no case folders with masks")
    return [case_folder_source(p) for p in case_folders]


def case_folder_source(folder: Path) -> CaseSource:
    """A folder of binary masks as one case."""
    return CaseSource(folder.name, folder, partial(load_mask_folder, folder))


def has_masks(folder: Path) -> bool:
    """Whether a folder holds a NIfTI file (stops at the first)."""
    return any(is_nifti(path) for path in folder.iterdir())
