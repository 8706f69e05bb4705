"""NIfTI import and export.

Axis convention: voxel arrays keep nibabel's array order, i.e. index ``[i, j, k]``
of ``nibabel.load(f).dataobj``, which is also the order of ``Space.shape``.
The affine is carried by the case's :class:`~spacetransformer.Space`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import nibabel as nib
import numpy as np
from spacetransformer import Space

from medmask_store.errors import InvalidCase, NiftiError
from medmask_store.model.case_data import CaseData, Unmapped
from medmask_store.model.validation import MAX_LABEL_VALUE
from medmask_store.storage.case import Case

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_ATOL = 1e-5
# Masks of one case whose affines differ by less than this are the same geometry
# (TotalSegmentator writes some sforms with float32 noise of ~1.5e-4).
GEOMETRY_ATOL = 1e-3


def is_nifti(path: Path) -> bool:
    return path.is_file() and path.name.endswith(NIFTI_SUFFIXES)


def nifti_stem(path: Path) -> str:
    """File name without ``.nii`` / ``.nii.gz``."""
    for suffix in NIFTI_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return path.stem


def mask_files(folder: Path) -> list[Path]:
    """The NIfTI files of a case folder, sorted by name."""
    return sorted(p for p in Path(folder).iterdir() if is_nifti(p))


def space_of(image: Any, path: Path) -> Space:
    """The Space of ``image.affine`` (sform first, as every NIfTI reader reports it).

    ``Space.from_nifti`` prefers the qform; it is given an affine-only view so
    that the Space matches ``image.affine``. Affines a Space cannot represent
    (shear) are refused.
    """
    if len(image.shape) != 3:
        raise NiftiError(f"{path}: expected a 3-D image, got shape {image.shape}")
    space = Space.from_nifti(SimpleNamespace(affine=image.affine, shape=tuple(image.shape)))
    if not np.allclose(space.to_nifti_affine(), image.affine, atol=AFFINE_ATOL):
        raise NiftiError(f"{path}: affine has shear or scaling that a Space cannot hold:\n{image.affine}")
    return space


def read_integer_voxels(image: Any, path: Path) -> np.ndarray:
    """Voxels as stored (scaling applied), refusing NaN, fractions and values outside 0..65535."""
    data = np.asanyarray(image.dataobj)
    if data.dtype.kind not in "uifb":
        raise NiftiError(f"{path}: unsupported voxel type {data.dtype}")
    if data.dtype.kind == "f":
        if not np.isfinite(data).all():
            raise NiftiError(f"{path}: holds NaN or infinite values; masks must be integers")
        if (np.mod(data, 1) != 0).any():
            raise NiftiError(f"{path}: holds non-integer values; masks must be integers")
    if data.size and (data.min() < 0 or data.max() > MAX_LABEL_VALUE):
        raise NiftiError(f"{path}: values {data.min()}..{data.max()} are outside the label range 0..{MAX_LABEL_VALUE}")
    if data.dtype.kind == "f":
        data = data.astype(np.uint16 if data.size and data.max() > 255 else np.uint8)
    return data


class NiftiMaskFolder(Mapping[str, np.ndarray]):
    """A folder of binary ``.nii.gz`` masks as a lazy mapping organ name -> bool mask.

    Masks are loaded one at a time, so a 117-file case never sits in memory at once.
    Every file must share the first file's shape and affine (within
    ``GEOMETRY_ATOL``); affines that differ by float noise are recorded in
    ``organ_affines`` so that export writes each file's own affine back.
    """

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise NiftiError(f"{self.folder}: not a folder")
        self.files = {nifti_stem(p): p for p in mask_files(self.folder)}
        if not self.files:
            raise NiftiError(f"{self.folder}: no .nii or .nii.gz files")
        first = next(iter(self.files.values()))
        first_image: Any = nib.load(first)
        self.space = space_of(first_image, first)
        self._first = first
        self._affine = first_image.affine
        self.organ_affines: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        path = self.files[name]
        image: Any = nib.load(path)
        if tuple(image.shape) != tuple(self.space.shape):
            raise NiftiError(
                f"{path}: shape {image.shape} differs from {tuple(self.space.shape)} of {self._first.name}; "
                "all masks of a case must share one geometry"
            )
        if not np.allclose(image.affine, self._affine, atol=GEOMETRY_ATOL):
            raise NiftiError(
                f"{path}: affine differs from that of {self._first.name}; all masks of a case must share "
                f"one geometry:\n{image.affine}\nvs\n{self._affine}"
            )
        if not np.allclose(image.affine, self._affine, rtol=0, atol=1e-7):
            self.organ_affines[name] = image.affine
        data = read_integer_voxels(image, path)
        if data.size and data.max() > 1:
            raise NiftiError(f"{path}: a binary mask must hold only 0 and 1, found values up to {data.max()}")
        return data.astype(bool, copy=False)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_mask_folder(folder: str | Path, meta: Mapping[str, Any] | None = None) -> CaseData:
    """A TotalSegmentator-style folder (one binary mask per organ) as a case."""
    masks = NiftiMaskFolder(folder)
    case = CaseData.from_masks(masks, space=masks.space, meta=meta)
    case.organ_affines.update(masks.organ_affines)
    return case


def load_label_map(path: str | Path) -> dict[str, int]:
    """A JSON label map ``{"liver": 5, ...}``."""
    path = Path(path)
    try:
        mapping = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NiftiError(f"{path}: cannot read the label map: {exc}") from exc
    if not isinstance(mapping, dict):
        raise NiftiError(f"{path}: a label map must be a JSON object {{name: value}}")
    return mapping


def load_multilabel(
    path: str | Path,
    mapping: Mapping[str, int] | str | Path,
    meta: Mapping[str, Any] | None = None,
    unmapped: Unmapped = "error",
) -> CaseData:
    """A multi-label ``.nii.gz`` with its label map (a dict or a JSON file) as a case."""
    path = Path(path)
    if not isinstance(mapping, Mapping):
        mapping = load_label_map(mapping)
    image: Any = nib.load(path)
    space = space_of(image, path)
    labels = read_integer_voxels(image, path)
    try:
        return CaseData.from_labels(labels, mapping, space=space, meta=meta, unmapped=unmapped)
    except InvalidCase as exc:
        raise NiftiError(f"{path}: {exc}") from exc


def export_mask_folder(case: Case, folder: str | Path) -> list[Path]:
    """Write one ``<organ>.nii.gz`` (uint8 0/1) per organ, empty organs included."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in case.organs:
        path = folder / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(case.read_organ(name).astype(np.uint8), case.organ_affine(name)), path)
        written.append(path)
    return written


def export_multilabel(case: Case, path: str | Path, allow_overlap: bool = False) -> tuple[Path, Path]:
    """Write a multi-label ``.nii.gz`` and its ``.json`` label map beside it.

    A single label file cannot hold overlapping organs; cases with binary
    layers raise :class:`NiftiError` unless ``allow_overlap`` is set, in which
    case layer organs are painted over the organs they overlap.
    """
    path = Path(path)
    if case.info.layer_names and not allow_overlap:
        overlaps = "; ".join(f"{name} overlaps {', '.join(case.overlapping_organs(name))}" for name in case.info.layer_names)
        raise NiftiError(
            f"case {case.case_id!r} has overlapping organs that one label file cannot hold ({overlaps}): "
            "export a mask folder, or allow overlap to paint them over their neighbours"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(case.read_labels(), case.space.to_nifti_affine()), path)
    label_map = path.with_name(nifti_stem(path) + ".json")
    label_map.write_text(json.dumps(case.mapping, indent=1))
    return path, label_map
