"""3D Slicer segmentation files (``.seg.nrrd``): export and import through slicerio and pynrrd.

A ``.seg.nrrd`` holds label volumes ("layers"; several make a 4-D volume, layer
axis first) and one set of ``SegmentN_*`` header fields per segment: its name,
colour (RGB 0..1), layer and label value on that layer. Segments on one layer
never overlap, so overlapping organs go to different layers and every organ
stays exact. The geometry is Slicer's ``ijkToLPS`` matrix (``space directions``
and ``space origin`` in LPS), which is a :class:`~spacetransformer.Space`'s own
index-to-world matrix: voxel arrays keep index ``[i, j, k]`` as everywhere else.

Export keeps the case's label values as ``LabelValue``, its RGB colours, its
empty organs (segments without voxels) and its metadata (JSON in the custom
header field ``MedMaskStore_Meta``, which Slicer ignores). Colour alpha is not
kept (Slicer keeps opacity in its scene, not in the file), nor organ affines
that differed from the Space by float noise.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from spacetransformer import Space
from spacetransformer.core.exceptions import SpaceTransformerError

from medmask_store.errors import InvalidCase, MaskStoreError, SlicerError
from medmask_store.extras import require
from medmask_store.limits import MAX_IMAGE_BYTES, MAX_VOXELS
from medmask_store.model.case_data import CaseData, label_dtype
from medmask_store.model.geometry import lps_affine, space_from_lps_affine
from medmask_store.model.palette import Color
from medmask_store.model.validation import MAX_LABEL_VALUE
from medmask_store.storage.case import Case

SEG_NRRD_SUFFIX = ".seg.nrrd"
#: Custom header field holding the case's metadata as JSON.
META_FIELD = "MedMaskStore_Meta"
#: gzip level of written files: level 9 (slicerio's default) takes 2.7 times as long for 9 % fewer bytes (s0000).
COMPRESSION_LEVEL = 6
# Direction cosines further from orthonormal than this are shear, which a Space cannot hold; Slicer
# writes directions from float32 and DICOM's 6-digit cosines, so noise well below it is accepted.
ORTHOGONALITY_ATOL = 1e-4
SEGMENT_FIELD = re.compile(r"^Segment\d+_")


def is_seg_nrrd(path: str | Path) -> bool:
    """Whether the file name ends with ``.seg.nrrd`` (the name by which 3D Slicer knows a segmentation)."""
    return Path(path).name.lower().endswith(SEG_NRRD_SUFFIX)


def slicer_libraries(purpose: str) -> tuple[ModuleType, ModuleType]:
    """slicerio and pynrrd (which slicerio imports itself, unchecked), or :class:`ExtraNotInstalled` naming the extra."""
    return require("slicerio", "slicer", purpose), require("nrrd", "slicer", purpose)


# -- export ------------------------------------------------------------------
def export_seg_nrrd(case: Case, path: str | Path) -> Path:
    """Write ``case`` as a 3D Slicer segmentation file: one segment per organ, overlapping organs on extra layers.

    Segments keep the organs' names, label values and RGB colours; empty organs are
    segments without voxels. Organs that overlap none share layer 0; the others are
    packed greedily, largest first, on the first layer where they overlap no organ
    (see :func:`segment_layers`), so every organ reads back exactly.
    """
    slicerio, _ = slicer_libraries("writing a 3D Slicer .seg.nrrd")
    path = Path(path)
    if not is_seg_nrrd(path):
        raise SlicerError(f"{path}: 3D Slicer opens a segmentation from a file named <name>{SEG_NRRD_SUFFIX}")
    check_ascii_names(case)
    layers = segment_layers(case)
    colors = case.colors
    segmentation = {
        "voxels": layered_voxels(case, layers),
        "ijkToLPS": lps_affine(case.space),
        "containedRepresentationNames": ["Binary labelmap"],
        "segments": [segment_fields(name, value, layers[name], colors[name]) for name, value in case.mapping.items()],
        META_FIELD: json.dumps(case.meta, allow_nan=False),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    slicerio.write_segmentation(str(path), segmentation, compression_level=COMPRESSION_LEVEL)
    return path


def check_ascii_names(case: Case) -> None:
    """pynrrd writes an ASCII header: refuse organ names it cannot write."""
    other = [name for name in case.organs if not name.isascii()]
    if other:
        raise SlicerError(
            f"case {case.case_id!r}: organ names {other} are not ASCII, and a .seg.nrrd header (as pynrrd writes it) "
            "is; rename them"
        )


def segment_layers(case: Case) -> dict[str, int]:
    """Each organ's Slicer layer: the first on which it overlaps no organ already placed, largest organs first.

    Organs that overlap none all land on layer 0; so does the largest of each group of
    overlapping organs, as it holds the label volume in the archive.
    """
    neighbours = overlap_graph(case)
    stats = case.stats
    layers: dict[str, int] = {}
    for name in sorted(case.organs, key=lambda organ: -stats[organ].voxels):
        taken = {layers[other] for other in neighbours[name] if other in layers}
        layers[name] = next(layer for layer in itertools.count() if layer not in taken)
    return layers


def overlap_graph(case: Case) -> dict[str, set[str]]:
    """The organs each organ shares voxels with.

    Organs without a binary layer hold distinct values of the label volume, so
    every overlap involves an organ with one: only theirs are looked up.
    """
    neighbours: dict[str, set[str]] = {name: set() for name in case.organs}
    for name in case.info.layer_names:
        for other in case.overlapping_organs(name):
            neighbours[name].add(other)
            neighbours[other].add(name)
    return neighbours


def layered_voxels(case: Case, layers: Mapping[str, int]) -> np.ndarray:
    """The label volumes of the layers: (i, j, k) for one layer, else (layer, i, j, k) as Slicer stores them."""
    count = max(layers.values(), default=0) + 1
    voxels = np.zeros((count, *case.space.shape), dtype=label_dtype(case.mapping))
    for name, layer in layers.items():
        bbox = case.stats[name].bbox
        if bbox is not None:
            mask, _ = case.read_organ(name, crop=True)  # checked against the organ's voxel count
            box = tuple(slice(start, stop) for start, stop in bbox)
            voxels[layer][box][mask] = case.mapping[name]
    return voxels[0] if count == 1 else voxels


def segment_fields(name: str, value: int, layer: int, color: Color) -> dict[str, Any]:
    """slicerio's description of one segment; the organ name is also its segment ID."""
    return {
        "id": name,
        "name": name,
        "nameAutoGenerated": False,
        "labelValue": value,
        "layer": layer,
        "color": [channel / 255 for channel in color[:3]],
        "colorAutoGenerated": False,
    }


# -- import ------------------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    """One segment of a file: its organ name, where its voxels are and its colour."""

    name: str
    layer: int
    label_value: int
    color: Color | None


class SegmentMasks(Mapping[str, np.ndarray]):
    """Organ name -> bool mask of its segment (its label value on its layer), computed when asked for,
    so that :meth:`CaseData.from_masks` holds one mask per thread rather than one per organ."""

    def __init__(self, layers: list[np.ndarray], segments: list[Segment]) -> None:
        self.layers = layers
        self.segments = {segment.name: segment for segment in segments}

    def __getitem__(self, name: str) -> np.ndarray:
        segment = self.segments[name]
        return self.layers[segment.layer] == segment.label_value

    def __iter__(self) -> Iterator[str]:
        return iter(self.segments)

    def __len__(self) -> int:
        return len(self.segments)


def load_seg_nrrd(path: str | Path) -> CaseData:
    """A 3D Slicer segmentation file as a case: one organ per segment, overlapping segments exact.

    Organs take the segments' names, colours and label values (``LabelValue``) when
    those are distinct across layers; otherwise (Slicer numbers each layer from 1)
    they are numbered 1, 2, ... in segment order. The geometry is the file's
    ``ijkToLPS``; files with shear, unnamed or duplicate segments, non-integer voxels
    or voxels no segment names are refused with a :class:`SlicerError` naming the file.
    """
    path = Path(path)
    segmentation = read_segmentation(path)
    voxels = segmentation["voxels"]
    if voxels.dtype.kind not in "ui":
        raise SlicerError(f"{path}: voxels are {voxels.dtype}; a segmentation holds integer label values")
    # One contiguous volume per layer: comparing a 4-D volume's strided layer is several times slower.
    layers = [np.asfortranarray(layer) for layer in (voxels[np.newaxis] if voxels.ndim == 3 else voxels)]
    segments = parse_segments(path, segmentation["segments"], len(layers))
    space = space_of(path, segmentation["ijkToLPS"], voxels.shape[-3:])
    try:
        case = CaseData.from_masks(
            SegmentMasks(layers, segments),
            space=space,
            mapping=organ_values(segments),
            meta=case_meta(path, segmentation),
        )
    except InvalidCase as exc:
        raise SlicerError(f"{path}: {exc}") from exc
    check_voxels_named(path, layers, segments, case)
    case.colors.update((segment.name, segment.color) for segment in segments if segment.color is not None)
    return case


def read_segmentation(path: Path) -> dict[str, Any]:
    """``slicerio.read_segmentation(path)``, once the header shows a segmentation whose voxels fit the limits."""
    slicerio, nrrd = slicer_libraries("reading a 3D Slicer .seg.nrrd")
    with read_errors(path, nrrd):
        check_header(path, nrrd.read_header(str(path)))
        segmentation: dict[str, Any] = slicerio.read_segmentation(str(path))
    return segmentation


@contextmanager
def read_errors(path: Path, nrrd: ModuleType) -> Iterator[None]:
    """Turn what pynrrd, slicerio and spacetransformer raise on a damaged file into a SlicerError naming it."""
    try:
        yield
    except MaskStoreError:
        raise
    except (nrrd.errors.NRRDError, OSError, ValueError, KeyError, IndexError, TypeError, EOFError, zlib.error,
            SpaceTransformerError) as exc:  # fmt: skip
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise SlicerError(f"{path}: not a readable 3D Slicer segmentation: {detail}") from exc


def check_header(path: Path, header: Mapping[str, Any]) -> None:
    """Refuse a NRRD header that describes no segmentation, detached voxels, or more voxels than the limits allow."""
    if not any(SEGMENT_FIELD.match(key) for key in header):
        raise SlicerError(f"{path}: a NRRD file without segments (no SegmentN_ fields): not a 3D Slicer segmentation")
    if "data file" in header or "datafile" in header:
        raise SlicerError(
            f"{path}: its voxels are in another file (a detached header); save the segmentation as one .seg.nrrd"
        )
    sizes = [int(n) for n in header.get("sizes", [])]
    if len(sizes) not in (3, 4):
        raise SlicerError(
            f"{path}: voxels of shape {tuple(sizes)}; a segmentation is 3-D, or 4-D with a layer axis first"
        )
    if math.prod(sizes[-3:]) > MAX_VOXELS or math.prod(sizes) > MAX_IMAGE_BYTES:
        raise SlicerError(
            f"{path}: voxels of shape {tuple(sizes)} exceed the limits of {MAX_VOXELS:,} voxels per volume and "
            f"{MAX_IMAGE_BYTES:,} bytes per image (medmask_store.limits)"
        )


def parse_segments(path: Path, fields: list[dict[str, Any]], layer_count: int) -> list[Segment]:
    """The file's segments, checked: named, unique names, on an existing layer, one label value per layer each."""
    segments = [parse_segment(path, index, segment, layer_count) for index, segment in enumerate(fields)]
    names = [segment.name for segment in segments]
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise SlicerError(
            f"{path}: several segments are named {', '.join(map(repr, repeated))}; segment names must be unique"
        )
    places = [(segment.layer, segment.label_value) for segment in segments]
    shared = sorted({place for place in places if places.count(place) > 1})
    if shared:
        raise SlicerError(
            f"{path}: several segments have the same layer and label value {shared}: they cannot be told apart"
        )
    return segments


def parse_segment(path: Path, index: int, fields: Mapping[str, Any], layer_count: int) -> Segment:
    """One segment from slicerio's fields.

    A segment without ``Layer`` is on the layer of its index, as Slicer reads it (files of
    Slicer before 4.11 hold one segment per layer), or on the only layer of a 3-D file; one
    without ``LabelValue`` has label 1.
    """
    what = f"{path}: segment {index} (ID {fields.get('id')!r})"
    name = fields.get("name")
    if not name:
        raise SlicerError(f"{what} has no name (Segment{index}_Name); name every segment")
    layer = fields.get("layer", index if layer_count > 1 else 0)
    if not 0 <= layer < layer_count:
        raise SlicerError(f"{what} {name!r} is on layer {layer}, but the file holds {layer_count} layer(s)")
    label_value = fields.get("labelValue", 1)
    if label_value < 1:
        raise SlicerError(f"{what} {name!r} has label value {label_value}; label values start at 1 (0 is background)")
    return Segment(name, layer, label_value, segment_color(f"{what} {name!r}", fields.get("color")))


def segment_color(what: str, color: list[float] | None) -> Color | None:
    """Slicer's RGB colour (0..1) as RGBA 0..255 (opaque), or None if the segment has none."""
    if color is None:
        return None
    if len(color) != 3 or not all(0 <= channel <= 1 for channel in color):
        raise SlicerError(f"{what} has colour {color}; a segment colour is three numbers 0..1")
    red, green, blue = (round(channel * 255) for channel in color)
    return red, green, blue, 255


def space_of(path: Path, ijk_to_lps: np.ndarray, shape: tuple[int, ...]) -> Space:
    """The Space whose index-to-world matrix is ``ijk_to_lps``; shear is refused."""
    matrix = np.asarray(ijk_to_lps, dtype=float)
    if not np.isfinite(matrix).all():
        raise SlicerError(f"{path}: space directions or space origin hold NaN or infinite values")
    directions = matrix[:3, :3]
    spacing = np.linalg.norm(directions, axis=0)
    if not (spacing > 0).all():
        raise SlicerError(f"{path}: space directions {directions.T.tolist()} have an axis of length 0")
    cosines = directions / spacing
    if not np.allclose(cosines.T @ cosines, np.eye(3), atol=ORTHOGONALITY_ATOL):
        raise SlicerError(
            f"{path}: space directions {directions.T.tolist()} are not orthogonal (shear), which a Space cannot hold; "
            "resample the segmentation"
        )
    try:
        return space_from_lps_affine(matrix, shape)
    except SpaceTransformerError as exc:
        raise SlicerError(f"{path}: its geometry is not a voxel grid: {exc}") from exc


def organ_values(segments: list[Segment]) -> dict[str, int]:
    """Organ name -> label value: the segments' label values if distinct and 1..65535, else 1, 2, ... in order."""
    values = [segment.label_value for segment in segments]
    if len(set(values)) == len(values) and max(values, default=0) <= MAX_LABEL_VALUE:
        return {segment.name: segment.label_value for segment in segments}
    return {segment.name: value for value, segment in enumerate(segments, 1)}


def case_meta(path: Path, segmentation: Mapping[str, Any]) -> dict[str, Any] | None:
    """The case metadata an export wrote into the ``MedMaskStore_Meta`` field, if any."""
    text = segmentation.get(META_FIELD)
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SlicerError(f"{path}: field {META_FIELD} is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise SlicerError(f"{path}: field {META_FIELD} holds {type(meta).__name__}, not a JSON object")
    return meta


def check_voxels_named(path: Path, layers: list[np.ndarray], segments: list[Segment], case: CaseData) -> None:
    """Refuse voxels whose label value no segment of their layer names: an import would drop them."""
    for layer, voxels in enumerate(layers):
        named = sum(case.stats[segment.name].voxels for segment in segments if segment.layer == layer)
        unnamed = int(np.count_nonzero(voxels)) - named
        if unnamed:
            raise SlicerError(f"{path}: layer {layer} holds {unnamed:,} voxels whose label value no segment names")
