"""NIfTI import and export.

Axis convention: voxel arrays keep nibabel's array order, i.e. index ``[i, j, k]``
of ``nibabel.load(f).dataobj``, which is also the order of ``Space.shape``.
The affine is carried by the case's :class:`~spacetransformer.Space`.

NIfTI files come from anywhere: :func:`open_nifti` checks a file's header (3-D,
at most ``MAX_VOXELS`` voxels of a mask voxel type and ``MAX_IMAGE_BYTES`` bytes,
the declared voxels present in the file, a finite affine) before any voxel is
read, :func:`read_voxels` decompresses a ``.nii.gz`` in pieces so that memory
follows the data the file holds, and whatever nibabel, gzip, zlib or
spacetransformer raise on a damaged file becomes a :class:`NiftiError` naming it.
"""

from __future__ import annotations

import gzip
import io
import json
import math
import os
import struct
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header
from nibabel.spatialimages import HeaderDataError
from nibabel.volumeutils import apply_read_scaling
from spacetransformer import Space
from spacetransformer.core.exceptions import SpaceTransformerError

from medmask_store.errors import InvalidCase, MaskStoreError, NiftiError
from medmask_store.limits import MAX_IMAGE_BYTES, MAX_VOXELS
from medmask_store.model.case_data import CaseData, Unmapped
from medmask_store.model.validation import MAX_LABEL_VALUE, validate_organ_name
from medmask_store.storage.case import Case

NIFTI_SUFFIXES = (".nii.gz", ".nii")
AFFINE_ATOL = 1e-5
# Masks of one case whose affines differ by less than this are the same geometry
# (TotalSegmentator writes some sforms with float32 noise of ~1.5e-4).
GEOMETRY_ATOL = 1e-3
GZIP_MAGIC = b"\x1f\x8b"
HEADER_CLASSES: tuple[type[Nifti1Header], ...] = (Nifti1Header, Nifti2Header)
#: Voxel types a mask may be stored as (numpy kinds: unsigned, signed, float).
MASK_KINDS = "uif"
#: Decompressed bytes per read of a gzip stream (counting it, or reading voxels): the memory a read
#: needs beyond its result.
GZIP_PIECE_BYTES = 2**20
#: What nibabel, gzip, zlib, struct, numpy, json and spacetransformer raise on a damaged or
#: hostile input file, most specific first, and what it means for the user.
READ_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (EOFError, "truncated"),
    (gzip.BadGzipFile, "damaged gzip data"),
    (zlib.error, "corrupt compressed data"),
    (MemoryError, "not enough memory to read it"),
    (HeaderDataError, "invalid NIfTI header"),
    (SpaceTransformerError, "its affine does not describe a voxel grid"),
    (UnicodeDecodeError, "not UTF-8 text"),
    (json.JSONDecodeError, "not valid JSON"),
    (RecursionError, "nested too deeply"),
    (OSError, "cannot be read"),
    (ValueError, "cannot be read"),
    (ArithmeticError, "cannot be read"),
    (struct.error, "cannot be read"),
)


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


# -- reading untrusted files -------------------------------------------------
@contextmanager
def input_errors(path: Path) -> Iterator[None]:
    """Turn what the readers raise on a damaged ``path`` into a one-line NiftiError naming it."""
    try:
        yield
    except MaskStoreError:
        raise
    except tuple(kind for kind, _ in READ_FAILURES) as exc:
        reason = next(reason for kind, reason in READ_FAILURES if isinstance(exc, kind))
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise NiftiError(f"{path}: {reason}: {detail}") from exc


@dataclass(frozen=True, eq=False)
class NiftiVolume:
    """A NIfTI file whose header passed the input checks; its voxels are read on demand.

    ``affine`` is the sform if set, else the qform, as ``nibabel.load(path).affine``;
    ``voxels`` is nibabel's lazy proxy, as ``nibabel.load(path).dataobj``; :func:`read_voxels` reads it.
    """

    path: Path
    shape: tuple[int, int, int]
    affine: np.ndarray
    voxels: ArrayProxy


def open_nifti(path: str | Path) -> NiftiVolume:
    """Check a NIfTI file before any voxel is read; raise :class:`NiftiError` naming it if it is unfit.

    The header must declare a 3-D image of at most ``MAX_VOXELS`` voxels of a mask
    voxel type and at most ``MAX_IMAGE_BYTES`` bytes, the file must hold the voxels
    it declares, and the affine must be finite. Header extensions are never read:
    ``nibabel.load`` would read them with sizes taken from the file unchecked (a
    negative one reads the whole stream).
    """
    path = Path(path)
    with input_errors(path):
        header = read_header(path)
        shape = declared_shape(header, path)
        check_voxel_type(header, path)
        check_image_bytes(header, shape, path)
        check_voxels_present(header, shape, path)
        affine = header.get_best_affine()
        if not np.isfinite(affine).all():
            raise NiftiError(f"{path}: affine holds NaN/inf values; fix the sform/qform of the file")
        return NiftiVolume(path, shape, affine, ArrayProxy(str(path), header))


def read_header(path: Path) -> Nifti1Header:
    """The fixed-size header of a single-file NIfTI-1 or NIfTI-2, checked as ``nibabel.load`` does.

    A ``.gz`` name means gzip, as for nibabel, which picks the decompressor by name.
    """
    with open(path, "rb") as raw:
        magic = raw.read(len(GZIP_MAGIC))
        if not magic:
            raise NiftiError(f"{path}: empty file")
        compressed = path.name.endswith(".gz")
        if compressed != (magic == GZIP_MAGIC):
            raise NiftiError(
                f"{path}: {'not ' if compressed else ''}gzip-compressed although named {path.suffix}; "
                "name a compressed NIfTI .nii.gz and an uncompressed one .nii"
            )
        raw.seek(0)
        stream: io.BufferedIOBase = gzip.GzipFile(fileobj=raw) if compressed else raw
        block = stream.read(max(kind.sizeof_hdr for kind in HEADER_CLASSES))
    for header_class in HEADER_CLASSES:
        if header_class.may_contain_header(block):
            return header_class(block[: header_class.sizeof_hdr])
    if len(block) < Nifti1Header.sizeof_hdr:
        raise NiftiError(f"{path}: truncated or not a NIfTI file: {len(block)} bytes, fewer than a NIfTI header holds")
    raise NiftiError(f"{path}: not a NIfTI file: no NIfTI-1 or NIfTI-2 header at its start")


def declared_shape(header: Nifti1Header, path: Path) -> tuple[int, int, int]:
    """The header's shape, refused unless 3-D with at most ``MAX_VOXELS`` voxels."""
    shape = tuple(int(n) for n in header.get_data_shape())
    if len(shape) != 3:
        raise NiftiError(f"{path}: expected a 3-D image, got shape {shape}")
    if min(shape) < 1:
        raise NiftiError(f"{path}: header declares shape {shape}; every dimension must be at least 1")
    if math.prod(shape) > MAX_VOXELS:
        raise NiftiError(
            f"{path}: header declares shape {shape}, {math.prod(shape):,} voxels, "
            f"above the limit of {MAX_VOXELS:,} voxels per image (medmask_store.limits.MAX_VOXELS)"
        )
    return shape[0], shape[1], shape[2]


def check_voxel_type(header: Nifti1Header, path: Path) -> None:
    dtype = header.get_data_dtype()
    if dtype.kind not in MASK_KINDS:
        raise NiftiError(f"{path}: unsupported voxel type {dtype}; masks are stored as integers or floats")


def check_image_bytes(header: Nifti1Header, shape: tuple[int, int, int], path: Path) -> None:
    """Refuse a header declaring more than ``MAX_IMAGE_BYTES`` bytes of voxels: reading them costs that much."""
    dtype = header.get_data_dtype()
    declared = math.prod(shape) * dtype.itemsize
    if declared > MAX_IMAGE_BYTES:
        raise NiftiError(
            f"{path}: header declares shape {shape} of {dtype}, {declared:,} bytes of voxels, above the limit of "
            f"{MAX_IMAGE_BYTES:,} bytes per image (medmask_store.limits.MAX_IMAGE_BYTES); save masks as uint8"
        )


def check_voxels_present(header: Nifti1Header, shape: tuple[int, int, int], path: Path) -> None:
    """Refuse a file holding fewer bytes than its header declares, or a ``.gz`` holding more.

    A ``.nii`` is mapped at its declared size, so this runs first. A gzip file's
    trailer gives its decompressed size modulo 2**32 for one small read; only when
    it disagrees (header lie, truncation, several gzip members) is the stream
    counted, in bounded memory. A forged trailer passes here: gzip's own length
    check then fails while :func:`read_voxels` reads, in memory bounded by the data.
    """
    vox_offset = float(header["vox_offset"])
    if not math.isfinite(vox_offset) or vox_offset < header.single_vox_offset:
        raise NiftiError(f"{path}: header puts the voxels at byte {vox_offset:g}, not after the {header.single_vox_offset}-byte header")
    offset = header.get_data_offset()
    expected = offset + math.prod(shape) * header.get_data_dtype().itemsize
    compressed = path.name.endswith(".gz")
    if not compressed:
        held = path.stat().st_size
    elif gzip_size_trailer(path) == expected % 2**32:
        return
    else:
        held = decompressed_size(path, limit=expected + 1)
    declared = f"header declares {shape} voxels of {header.get_data_dtype()} ({expected:,} bytes with the header)"
    if held < expected:
        raise NiftiError(f"{path}: {declared}, but the file holds only {held:,} bytes: it is truncated or its header is wrong")
    # A .nii is mapped, so bytes after its voxels cost nothing; a .gz stream longer than declared
    # (its trailer disagreed) means the header does not describe what the file holds.
    if held > expected and compressed:
        raise NiftiError(f"{path}: {declared}, but the file holds more: its header does not describe its data")


def gzip_size_trailer(path: Path) -> int:
    """The ISIZE field of a gzip file (its last 4 bytes): the last member's size modulo 2**32."""
    with open(path, "rb") as raw:
        raw.seek(-4, os.SEEK_END)
        return int.from_bytes(raw.read(4), "little")


def decompressed_size(path: Path, limit: int) -> int:
    """Decompressed bytes of the gzip file ``path``, counted up to at least ``limit`` in bounded memory."""
    size = 0
    with gzip.open(path, "rb") as stream:
        while size < limit and (piece := stream.read(GZIP_PIECE_BYTES)):
            size += len(piece)
    return size


def affine_text(affine: np.ndarray) -> str:
    """An affine on one line, for error messages."""
    return str(np.round(affine, 6).tolist())


# -- masks and label volumes -------------------------------------------------
def space_of(volume: NiftiVolume) -> Space:
    """The Space of ``volume.affine`` (sform first, as every NIfTI reader reports it).

    ``Space.from_nifti`` prefers a qform; a NiftiVolume has none, so the Space
    matches ``volume.affine``. Affines a Space cannot represent (shear) are refused.
    """
    with input_errors(volume.path):
        space = Space.from_nifti(volume)
    if not np.allclose(space.to_nifti_affine(), volume.affine, atol=AFFINE_ATOL):
        raise NiftiError(f"{volume.path}: affine has shear or scaling that a Space cannot hold: {affine_text(volume.affine)}")
    return space


def read_voxels(volume: NiftiVolume) -> np.ndarray:
    """The array ``np.asanyarray(volume.voxels)`` gives (scaled, same dtype, byte order and Fortran order).

    A ``.nii`` is memory-mapped by nibabel (``open_nifti`` checked that it holds its
    voxels). nibabel would zero-fill the declared size of a ``.nii.gz`` before
    decompressing, so a stream shorter than its header would still cost all of it;
    here an uninitialized array is filled piece by piece: memory follows the data.
    """
    proxy = volume.voxels
    if not volume.path.name.endswith(".gz"):
        return np.asanyarray(proxy)
    raw = np.empty(math.prod(proxy.shape) * proxy.dtype.itemsize, np.uint8)
    with gzip.open(volume.path, "rb") as stream, raw.data as buffer:
        stream.seek(proxy.offset)
        filled = 0
        while filled < raw.size:
            got = stream.readinto(buffer[filled : filled + GZIP_PIECE_BYTES])
            if not got:
                raise NiftiError(
                    f"{volume.path}: truncated: the file holds {filled:,} of the {raw.size:,} declared voxel bytes"
                )
            filled += got
    unscaled = np.ndarray(proxy.shape, proxy.dtype, buffer=raw, order=proxy.order)
    # As ArrayProxy scales: the intercept takes the slope's type where that is safe, then nibabel's scaling.
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return apply_read_scaling(unscaled, slope, inter)


def read_integer_voxels(volume: NiftiVolume) -> np.ndarray:
    """Voxels as stored (scaling applied), refusing NaN, fractions and values outside 0..65535."""
    path = volume.path
    with input_errors(path):
        data = read_voxels(volume)
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
        for name, path in self.files.items():  # the file name is the organ name: refuse bad ones up front
            try:
                validate_organ_name(name)
            except InvalidCase as exc:
                raise NiftiError(f"{self.folder}: file {path.name!r}: {exc}; rename the file") from exc
        self._first = open_nifti(next(iter(self.files.values())))
        self.space = space_of(self._first)
        self.organ_affines: dict[str, np.ndarray] = {}

    def __getitem__(self, name: str) -> np.ndarray:
        volume, first = open_nifti(self.files[name]), self._first
        if volume.shape != first.shape:
            raise NiftiError(
                f"{volume.path}: shape {volume.shape} differs from {first.shape} of {first.path.name}; "
                "all masks of a case must share one geometry"
            )
        if not np.allclose(volume.affine, first.affine, atol=GEOMETRY_ATOL):
            raise NiftiError(
                f"{volume.path}: affine {affine_text(volume.affine)} differs from {affine_text(first.affine)} of "
                f"{first.path.name}; all masks of a case must share one geometry"
            )
        if not np.allclose(volume.affine, first.affine, rtol=0, atol=1e-7):
            self.organ_affines[name] = volume.affine
        data = read_integer_voxels(volume)
        if data.size and data.max() > 1:
            raise NiftiError(f"{volume.path}: a binary mask must hold only 0 and 1, found values up to {data.max()}")
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
    with input_errors(path):
        mapping = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(mapping, dict):
        raise NiftiError(f"{path}: a label map must be a JSON object {{name: value}}, not a {type(mapping).__name__}")
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
    volume = open_nifti(path)
    space = space_of(volume)
    labels = read_integer_voxels(volume)
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
        save_mask(case.read_organ(name), case.organ_affine(name), path)
        written.append(path)
    return written


def save_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a binary mask as a uint8 0/1 NIfTI with ``nibabel.save``, as TotalSegmentator writes its masks."""
    voxels = mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)  # a view: no second volume
    nib.save(nib.Nifti1Image(voxels, affine), path)


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
