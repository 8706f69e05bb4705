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

Label values and colours come from a label table (:mod:`medmask_store.io.labels`),
and go back out as one in every exported file's header (:mod:`medmask_store.io.caret`).
"""

from __future__ import annotations

import gzip
import json
import math
import os
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import deflate
import nibabel as nib
import numpy as np
from nibabel.arrayproxy import ArrayProxy
from nibabel.nifti1 import Nifti1Extension, Nifti1Header
from nibabel.volumeutils import apply_read_scaling
from spacetransformer import Space

from medmask_store.errors import InvalidCase, NiftiError
from medmask_store.io.caret import CARET_CODE, label_table_xml
from medmask_store.io.labels import BUILTIN_TABLES, LabelSource, LabelTable, embedded_label_table, load_labels
from medmask_store.io.nifti_header import NIFTI_SUFFIXES, input_errors, read_header
from medmask_store.limits import MAX_IMAGE_BYTES, MAX_VOXELS
from medmask_store.model.case_data import CaseData, Unmapped
from medmask_store.model.geometry import nifti_affine, space_from_nifti_affine
from medmask_store.model.validation import MAX_LABEL_VALUE, validate_organ_name
from medmask_store.storage.case import Case

AFFINE_ATOL = 1e-5
# Masks of one case whose affines differ by less than this are the same geometry
# (TotalSegmentator writes some sforms with float32 noise of ~1.5e-4).
GEOMETRY_ATOL = 1e-3
#: Voxel types a mask may be stored as (numpy kinds: unsigned, signed, float).
MASK_KINDS = "uif"
#: Decompressed bytes per read of a gzip stream (counting it, or reading voxels): the memory a read
#: needs beyond its result.
GZIP_PIECE_BYTES = 2**20
# Deflate's worst case: 5 bytes per stored block of up to 65,535 bytes; a gzip header and trailer
# (with a file name or comment) fit in the overhead.
DEFLATE_STORED_BLOCK = 13_000
GZIP_OVERHEAD = 2**16


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
    """The (LPS) Space of ``volume.affine`` (sform first, as every NIfTI reader reports it).

    Affines a Space cannot represent (shear, an axis of length 0) are refused as the Space's checks refuse them.
    """
    with input_errors(volume.path):
        return space_from_nifti_affine(volume.affine, volume.shape)


def read_voxels(volume: NiftiVolume) -> np.ndarray:
    """The array ``np.asanyarray(volume.voxels)`` gives (scaled, same dtype, byte order and Fortran order).

    A ``.nii`` is memory-mapped by nibabel (``open_nifti`` checked that it holds its
    voxels). A ``.nii.gz`` is decompressed by libdeflate in one call into a buffer of
    exactly the size its header declares (checked against the limits), several
    times faster than zlib's streaming; a stream libdeflate cannot take whole
    (several gzip members) is read in pieces, so memory follows the data the file
    holds rather than what its header claims.
    """
    proxy = volume.voxels
    if not volume.path.name.endswith(".gz"):
        return np.asanyarray(proxy)
    voxel_bytes = math.prod(proxy.shape) * proxy.dtype.itemsize
    buffer: bytearray | np.ndarray | None = _inflate_whole(volume.path, proxy.offset + voxel_bytes)
    offset = proxy.offset
    if buffer is None:
        buffer, offset = _inflate_in_pieces(volume.path, proxy.offset, voxel_bytes), 0
    unscaled = np.ndarray(proxy.shape, proxy.dtype, buffer=buffer, offset=offset, order=proxy.order)
    # As ArrayProxy scales: the intercept takes the slope's type where that is safe, then nibabel's scaling.
    slope, inter = np.asanyarray(proxy.slope), np.asanyarray(proxy.inter)
    if np.can_cast(inter, slope.dtype):
        inter = inter.astype(slope.dtype)
    return apply_read_scaling(unscaled, slope, inter)


def _inflate_whole(path: Path, size: int) -> bytearray | None:
    """The whole decompressed stream of a single-member gzip file of ``size`` bytes, or None if it is not one.

    libdeflate checks the member's crc32 and length; a stream of several members
    decodes short (only the first) and is left to :func:`_inflate_in_pieces`.
    """
    if path.stat().st_size > size + size // DEFLATE_STORED_BLOCK + GZIP_OVERHEAD:
        return None  # more bytes than any one member of ``size`` bytes needs: not read whole
    compressed = path.read_bytes()
    try:
        data = deflate.gzip_decompress(compressed, size)
    except deflate.DeflateError:
        return None
    return data if len(data) == size else None


def _inflate_in_pieces(path: Path, offset: int, length: int) -> np.ndarray:
    """``length`` decompressed bytes from ``offset`` on, read piece by piece into one buffer."""
    raw = np.empty(length, np.uint8)
    with gzip.open(path, "rb") as stream, raw.data as buffer:
        stream.seek(offset)
        filled = 0
        while filled < raw.size:
            got = stream.readinto(buffer[filled : filled + GZIP_PIECE_BYTES])
            if not got:
                raise NiftiError(f"{path}: truncated: the file holds {filled:,} of the {raw.size:,} declared voxel bytes")
            filled += got
    return raw


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
        in_range = data.dtype.kind == "u" and data.dtype.itemsize <= 2  # uint8/uint16 need no scan
        if data.size and not in_range and (data.min() < 0 or data.max() > MAX_LABEL_VALUE):
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
        # 0/1 bytes are valid booleans: a uint8 mask is viewed, not copied
        return data.view(np.bool_) if data.dtype.itemsize == 1 else data.astype(bool)

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)


def load_mask_folder(
    folder: str | Path,
    meta: Mapping[str, Any] | None = None,
    labels: LabelSource | None = None,
    unmapped: Unmapped = "error",
) -> CaseData:
    """A TotalSegmentator-style folder (one binary mask per organ) as a case.

    Organs are numbered 1, 2, ... in file-name order, or take their values and
    colours from ``labels`` (a :class:`LabelTable` or what :func:`load_labels`
    reads, e.g. ``"totalsegmentator"``); see :func:`folder_values` for files the
    table does not name.
    """
    masks = NiftiMaskFolder(folder)
    table = None if labels is None else load_labels(labels)
    mapping = None if table is None else folder_values(masks.folder, table, unmapped)
    try:
        case = CaseData.from_masks(masks, space=masks.space, mapping=mapping, meta=meta)
    except InvalidCase as exc:
        raise NiftiError(f"{masks.folder}: {exc}") from exc
    case.organ_affines.update(masks.organ_affines)
    if table is not None:
        case.colors.update((name, color) for name, color in table.colors.items() if name in case.mapping)
    return case


def folder_values(folder: Path, table: LabelTable, unmapped: Unmapped = "error") -> dict[str, int]:
    """Label values of a mask folder's organs from ``table``.

    A file whose organ the table lacks is an error naming it, unless ``unmapped="name"``:
    then such organs take the next free values above the table's largest, in name order.
    """
    names = {nifti_stem(path): path.name for path in mask_files(folder)}
    lacking = [file for name, file in names.items() if name not in table.values]
    if lacking and unmapped == "error":
        shown = ", ".join(lacking[:10]) + (f" and {len(lacking) - 10} more" if len(lacking) > 10 else "")
        raise NiftiError(
            f"{folder}: the label table names no organ for {shown}; add them to the table, or number them after "
            "its largest value: pass unmapped='name'"
        )
    return table.values_for(names)


def multilabel_table(path: str | Path, labels: LabelSource | None = None) -> LabelTable:
    """The label table of a multi-label file: ``labels`` if given, else ``<stem>.json`` beside it, else the
    table in its header (as TotalSegmentator writes one)."""
    path = Path(path)
    sidecar = path.with_name(nifti_stem(path) + ".json")
    if labels is None and sidecar.is_file():
        labels = sidecar
    table = load_labels(labels) if labels is not None else embedded_label_table(path)
    if table is None:
        raise NiftiError(
            f"{path}: a multi-label file needs a label table: --labels (a JSON, text or NIfTI file, or "
            f"{' / '.join(BUILTIN_TABLES)}), {sidecar.name} beside it, or one in its header"
        )
    return table


def load_multilabel(
    path: str | Path,
    labels: LabelSource | None = None,
    meta: Mapping[str, Any] | None = None,
    unmapped: Unmapped = "error",
) -> CaseData:
    """A multi-label ``.nii.gz`` as a case, with the label table :func:`multilabel_table` finds for it."""
    path = Path(path)
    volume = open_nifti(path)
    table = multilabel_table(path, labels)
    space = space_of(volume)
    voxels = read_integer_voxels(volume)
    try:
        case = CaseData.from_labels(voxels, table.values, space=space, meta=meta, unmapped=unmapped)
    except InvalidCase as exc:
        raise NiftiError(f"{path}: {exc}") from exc
    case.colors.update(table.colors)
    return case


def labelled_image(case: Case, voxels: np.ndarray, affine: np.ndarray, values: Mapping[str, int]) -> nib.Nifti1Image:
    """A NIfTI image carrying the label table of organs ``values`` (names, values, the case's colours) in its header."""
    try:
        table = label_table_xml(values, case.colors)
    except InvalidCase as exc:
        raise NiftiError(f"case {case.case_id!r}: {exc}") from exc
    image = nib.Nifti1Image(voxels, affine)
    image.header.extensions.append(Nifti1Extension(CARET_CODE, table))
    return image


def export_mask_folder(
    case: Case,
    folder: str | Path,
    organs: Sequence[str] | None = None,
    progress: Callable[[Iterable[str]], Iterable[str]] = iter,
) -> list[Path]:
    """Write one ``<organ>.nii.gz`` (uint8 0/1) per organ (or per one of ``organs``), empty organs included, each
    with its one-label table (Key 1: the organ's name and colour). ``progress`` wraps the organ names, e.g. ``tqdm``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name in progress(case.organs if organs is None else organs):
        path = folder / f"{name}.nii.gz"
        mask = case.read_organ(name).view(np.uint8)  # a view: no second volume
        nib.save(labelled_image(case, mask, case.organ_affine(name), {name: 1}), path)
        written.append(path)
    return written


def save_mask(mask: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a binary mask as a uint8 0/1 NIfTI with ``nibabel.save``, as TotalSegmentator writes its masks."""
    voxels = mask.view(np.uint8) if mask.dtype == np.bool_ else mask.astype(np.uint8)  # a view: no second volume
    nib.save(nib.Nifti1Image(voxels, affine), path)


def export_multilabel(
    case: Case, path: str | Path, allow_overlap: bool = False, organs: Sequence[str] | None = None
) -> tuple[Path, Path]:
    """Write a multi-label ``.nii.gz`` with its label table (names, values, colours) in its header, as
    TotalSegmentator does, and its ``.json`` label map beside it; only ``organs`` if given.

    A single label file cannot hold overlapping organs; cases with binary
    layers raise :class:`NiftiError` unless ``allow_overlap`` is set, in which
    case layer organs are painted over the organs they overlap.
    """
    path = Path(path)
    chosen = list(case.mapping if organs is None else organs)
    overlapping = {name: [o for o in case.overlapping_organs(name) if o in chosen] for name in case.info.layer_names}
    overlapping = {name: others for name, others in overlapping.items() if name in chosen and others}
    if overlapping and not allow_overlap:
        overlaps = "; ".join(f"{name} overlaps {', '.join(others)}" for name, others in overlapping.items())
        raise NiftiError(
            f"case {case.case_id!r} has overlapping organs that one label file cannot hold ({overlaps}): "
            "export a mask folder, or allow overlap to paint them over their neighbours"
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    mapping = {name: value for name, value in case.mapping.items() if name in chosen}
    labels = case.read_labels() if organs is None else _chosen_labels(case, mapping)
    nib.save(labelled_image(case, labels, nifti_affine(case.space), mapping), path)
    label_map = path.with_name(nifti_stem(path) + ".json")
    label_map.write_text(json.dumps(mapping, indent=1))
    return path, label_map


def _chosen_labels(case: Case, mapping: dict[str, int]) -> np.ndarray:
    """A label volume of the ``mapping``'s organs only, layer organs painted last (as :meth:`Case.read_labels`)."""
    labels = np.zeros(case.space.shape, dtype=case.info.label_dtype)
    for name in sorted(mapping, key=lambda organ: organ in case.info.layer_names):
        labels[case.read_organ(name)] = mapping[name]
    return labels
