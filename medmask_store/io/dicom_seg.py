"""DICOM SEG import and export with highdicom.

A case goes out as a BINARY Segmentation of the CT series it segments: one
segment per organ, numbered 1..N in order of label value (so TotalSegmentator's
values 1..117 are the segment numbers), with the organ's name as SegmentLabel,
its colour as RecommendedDisplayCIELabValue, and coded concepts SCT "Anatomical
Structure" (category) / SCT "Organ" (type). Each segment has its own frames, so
overlapping organs stay exact; empty organs are segments without frames. The
frames take their positions, orientation and pixel spacing from the CT slices.

What DICOM SEG has no attribute for goes into ImageComments as a JSON document
(``{"medmask_store": {...}}``, see :class:`SegExtras`): each segment's label
value, each colour's alpha, and the position and slice count of the full grid,
which the frames alone do not give (empty slices at either end have none).
A SEG without it (from another tool) imports with segment numbers as values and
the grid its frames span.

Geometry: voxel ``[i, j, k]`` is column i, row j of slice k; patient (LPS)
coordinates are the Space's (:func:`~medmask_store.model.geometry.lps_affine`).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import numpy as np
from spacetransformer import Space

import medmask_store
from medmask_store.errors import DicomSegError, InvalidCase
from medmask_store.extras import require
from medmask_store.io.labels import LabelTable
from medmask_store.io.nifti import GEOMETRY_ATOL
from medmask_store.model.case_data import CaseData
from medmask_store.model.geometry import lps_affine, space_from_lps_affine
from medmask_store.model.palette import Color
from medmask_store.model.voxels import Box, occupied_box
from medmask_store.storage.case import Case

if TYPE_CHECKING:
    from highdicom import VolumeGeometry
    from highdicom.seg import Segmentation, SegmentDescription
    from pydicom import Dataset

SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
LABEL_MAP_SEGMENTATION_STORAGE = "1.2.840.10008.5.1.4.1.1.66.7"
SEG_SOP_CLASSES = (SEGMENTATION_STORAGE, LABEL_MAP_SEGMENTATION_STORAGE)
EXTRAS_KEY = "medmask_store"
# NIfTI world coordinates are RAS, DICOM's are LPS.
# Direction cosines of a CT series and a case agree within this (NIfTI affines are float32).
ORIENTATION_ATOL = 1e-4
LO_MAX_CHARS = 64  # SegmentLabel is a DICOM LO


def _dicom() -> tuple[ModuleType, ModuleType]:
    """highdicom and pydicom, or :class:`ExtraNotInstalled` naming the ``dicom`` extra."""
    return require("highdicom", "dicom", "DICOM SEG"), require("pydicom", "dicom", "DICOM SEG")


# -- what a SEG carries besides DICOM's attributes ------------------------------------
@dataclass(frozen=True)
class SegExtras:
    """The JSON document in a SEG's ImageComments: per segment (in segment-number order) its label value and
    its colour's alpha; the patient position of slice 0 of the full grid and the grid's slice count."""

    values: list[int]
    alphas: list[int]
    origin: list[float]
    slices: int

    def to_json(self) -> str:
        return json.dumps({EXTRAS_KEY: asdict(self)})

    @classmethod
    def read(cls, seg: Segmentation, path: Path) -> SegExtras | None:
        """The document of ``seg``, None if it has none (another tool wrote it)."""
        try:
            document = json.loads(str(seg.get("ImageComments", "")))[EXTRAS_KEY]
        except (ValueError, TypeError, KeyError):
            return None
        if not _well_formed(document):
            raise DicomSegError(f"{path}: its ImageComments hold a malformed {EXTRAS_KEY} document: {document!r:.200}")
        extras = cls(**document)
        if not len(extras.values) == len(extras.alphas) == len(seg.segment_numbers):
            raise DicomSegError(
                f"{path}: its {EXTRAS_KEY} document gives {len(extras.values)} values and {len(extras.alphas)} alphas "
                f"for {len(seg.segment_numbers)} segments"
            )
        return extras


def _well_formed(document: Any) -> bool:
    """Whether ``document`` has the fields of a :class:`SegExtras`, of their types."""
    if not isinstance(document, dict) or set(document) != {field.name for field in fields(SegExtras)}:
        return False
    if not all(isinstance(document[key], list) for key in ("values", "alphas", "origin")):
        return False
    integers = [*document["values"], *document["alphas"], document["slices"]]
    origin = document["origin"]
    return all(type(v) is int for v in integers) and len(origin) == 3 and all(type(v) in (int, float) for v in origin)


# -- export ------------------------------------------------------------------------------
def export_dicom_seg(case: Case, path: str | Path, ct_series: str | Path) -> Path:
    """Write ``case`` as a DICOM SEG of the CT series in folder ``ct_series``, whose geometry must be the case's.

    highdicom takes the frames as one bool per voxel and organ; that array is allocated lazily,
    so memory follows the slices each organ spans (s0000, 117 organs: about 0.4 GB).
    """
    hd, _ = _dicom()
    path = Path(path)
    slices = ct_slices(Path(ct_series), case.space)
    names = sorted(case.mapping, key=case.mapping.__getitem__)
    long = [name for name in names if len(name) > LO_MAX_CHARS]
    if long:
        raise DicomSegError(
            f"case {case.case_id!r}: organ names longer than {LO_MAX_CHARS} characters cannot be DICOM segment labels: {long}"
        )
    colors = case.colors
    seg = hd.seg.Segmentation(
        source_images=slices,
        pixel_array=_stacked_segments(case, names),
        segmentation_type="BINARY",
        segment_descriptions=[_segment_description(hd, n, name, colors[name]) for n, name in enumerate(names, 1)],
        series_instance_uid=hd.UID(),
        series_number=1,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="medmask_store",
        manufacturer_model_name="medmask_store",
        software_versions=medmask_store.__version__,
        device_serial_number="1",
        content_label="MEDMASK_STORE",
        content_description=f"case {case.case_id}"[:LO_MAX_CHARS],
        series_description="Segmentation",
        specific_character_set="ISO_IR 192",  # UTF-8: organ names as they are
    )
    origin = [float(v) for v in slices[0].ImagePositionPatient]
    seg.ImageComments = SegExtras(
        [case.mapping[n] for n in names], [colors[n][3] for n in names], origin, len(slices)
    ).to_json()
    path.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(path)
    return path


def _stacked_segments(case: Case, names: list[str]) -> np.ndarray:
    """Frames (k, j, i) stacked by segment on the last axis, as highdicom takes them; overlaps kept."""
    i, j, k = case.space.shape
    stack = np.zeros((len(names), k, j, i), dtype=bool)
    for segment, name in zip(stack, names):
        bbox = case.stats[name].bbox
        if bbox is not None:  # an empty organ is a segment without frames
            box = tuple(slice(start, stop) for start, stop in reversed(bbox))
            segment[box] = case.read_organ(name, crop=True)[0].transpose(2, 1, 0)
    return np.moveaxis(stack, 0, -1)


def _segment_description(hd: ModuleType, number: int, name: str, color: Color) -> SegmentDescription:
    codes = hd.sr.CodedConcept
    return hd.seg.SegmentDescription(
        segment_number=number,
        segment_label=name,
        segmented_property_category=codes("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=codes("91772007", "SCT", "Organ"),
        algorithm_type="MANUAL",
        display_color=hd.color.CIELabColor.from_rgb(*color[:3]),
    )


# -- the referenced CT series --------------------------------------------------------------
def ct_slices(folder: Path, space: Space) -> list[Dataset]:
    """The slices (without pixels) of the CT series in ``folder`` whose geometry is ``space``'s, in k order.

    Raises :class:`DicomSegError` if the folder is missing, holds no DICOM images, or no series
    in it matches, naming each series and what differs.
    """
    _, pydicom = _dicom()
    if not folder.is_dir():
        raise DicomSegError(
            f"{folder}: no such folder; a DICOM SEG export needs the folder of the CT series it segments"
        )
    series: dict[str, list[tuple[Path, Dataset]]] = {}
    for file in sorted(p for p in folder.rglob("*") if _has_dicom_preamble(p)):
        try:
            dataset = pydicom.dcmread(file, stop_before_pixels=True)
        except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
            raise DicomSegError(f"{file}: cannot be read as DICOM: {exc}") from exc
        if "ImagePositionPatient" in dataset and "SeriesInstanceUID" in dataset:
            series.setdefault(str(dataset.SeriesInstanceUID), []).append((file, dataset))
    if not series:
        raise DicomSegError(
            f"{folder}: holds no DICOM images with a position (single-frame CT slices); give the CT series' folder"
        )
    problems = []
    for uid, members in series.items():
        ordered, differences = _series_slices(members, space)
        if not differences:
            return ordered
        described = f"series {uid} ({len(members)} files, e.g. {members[0][0].name})"
        problems.append(f"{described}: {'; '.join(differences)}")
    raise DicomSegError(f"{folder}: no CT series has the case's geometry: {' | '.join(problems)}")


def _has_dicom_preamble(path: Path) -> bool:
    """A DICOM file: 128 bytes of preamble, then ``DICM``."""
    try:
        with open(path, "rb") as file:
            return file.read(132)[128:] == b"DICM"
    except OSError:  # a folder, a missing or unreadable file
        return False


def _series_slices(members: list[tuple[Path, Dataset]], space: Space) -> tuple[list[Dataset], list[str]]:
    """The series' slices in k order, and what in its geometry differs from ``space`` (nothing if it matches)."""
    differences = _plane_differences([ds for _, ds in members], space)
    if differences:
        return [], differences
    affine = lps_affine(space)
    by_k: dict[int, Dataset] = {}
    for file, ds in members:
        position = np.array([float(v) for v in ds.ImagePositionPatient])
        k = int(round(np.dot(position - affine[:3, 3], affine[:3, 2]) / space.spacing[2] ** 2))
        on_grid = np.allclose(position, affine[:3, 3] + k * affine[:3, 2], atol=GEOMETRY_ATOL)
        if not (on_grid and 0 <= k < space.shape[2]) or k in by_k:
            return [], [
                f"{file.name} at {_text(position)} is not a slice of the case's grid (slice 0 at {_text(affine[:3, 3])})"
            ]
        by_k[k] = ds
    return [by_k[k] for k in range(space.shape[2])], []


def _plane_differences(slices: list[Dataset], space: Space) -> list[str]:
    """How the slices' count, size, orientation and pixel spacing differ from ``space``'s."""
    i, j, k = space.shape
    affine = lps_affine(space)
    orientation = np.r_[affine[:3, 0] / space.spacing[0], affine[:3, 1] / space.spacing[1]]
    pixel_spacing = [space.spacing[1], space.spacing[0]]  # between rows (along j), between columns (along i)
    differences = []
    if len(slices) != k:
        differences.append(f"{len(slices)} slices, the case has {k}")
    sizes = {(int(ds.Columns), int(ds.Rows)) for ds in slices}
    if sizes != {(i, j)}:
        differences.append(f"columns x rows {sorted(sizes)}, the case's slices are {i} x {j}")
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in slices])
    if not np.allclose(orientations, orientation, atol=ORIENTATION_ATOL):
        differences.append(f"orientation {_text(orientations[0])}, the case's is {_text(orientation)}")
    spacings = np.array([[float(v) for v in ds.PixelSpacing] for ds in slices])
    if not np.allclose(spacings, pixel_spacing, atol=GEOMETRY_ATOL):
        differences.append(f"pixel spacing {_text(spacings[0])}, the case's is {_text(pixel_spacing)}")
    return differences


def _text(values: Any) -> str:
    return str(np.round(np.asarray(values, dtype=float), 6).tolist())


# -- import ----------------------------------------------------------------------------------
def is_dicom_seg(path: str | Path) -> bool:
    """Whether ``path`` is a DICOM file of SOP class (Label Map) Segmentation Storage; reads its file meta only."""
    path = Path(path)
    if not _has_dicom_preamble(path):
        return False
    _, pydicom = _dicom()
    try:
        meta = pydicom.filereader.read_file_meta_info(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError):
        return False
    return str(meta.get("MediaStorageSOPClassUID", "")) in SEG_SOP_CLASSES


def load_dicom_seg(path: str | Path, meta: Mapping[str, Any] | None = None) -> CaseData:
    """A DICOM SEG as a case: one organ per segment (SegmentLabel), colours, overlaps exact, geometry from its frames.

    Label values, alphas and the full grid come from a medmask_store export's ImageComments; other SEGs
    number organs by segment and span the slices their frames cover.
    """
    path = Path(path)
    seg = read_segmentation(path)
    extras = SegExtras.read(seg, path)
    grid = _grid(seg, extras, path)
    numbers = list(seg.segment_numbers)
    names = [_segment_label(seg, n, path) for n in numbers]
    if len(set(names)) < len(names):
        repeated = sorted({name for name in names if names.count(name) > 1})
        raise DicomSegError(
            f"{path}: several segments have the SegmentLabel {', '.join(map(repr, repeated))}; organ names must differ"
        )
    values = extras.values if extras else numbers
    alphas = extras.alphas if extras else [255] * len(numbers)
    colors = {
        name: (*rgb, alpha)
        for name, n, alpha in zip(names, numbers, alphas)
        if (rgb := _segment_rgb(seg, n)) is not None
    }
    try:
        space = space_from_lps_affine(grid.affine, grid.spatial_shape)
        table = LabelTable(dict(zip(names, values)), colors)  # type: ignore[arg-type]
        masks = SegmentMasks(seg, dict(zip(names, numbers)), grid)
        case = CaseData.from_masks(masks, space=space, mapping=table.values, meta=meta)
    except (InvalidCase, ValueError) as exc:
        raise DicomSegError(f"{path}: {exc}") from exc
    except RuntimeError as exc:  # highdicom cannot place a segment's frames on the grid
        raise DicomSegError(f"{path}: inconsistent geometry: {exc}") from exc
    case.colors.update(table.colors)
    return case


def read_segmentation(path: Path) -> Segmentation:
    """``highdicom.seg.segread(path)``, refusing what is not a BINARY or LABELMAP segmentation."""
    hd, pydicom = _dicom()
    if not is_dicom_seg(path):
        raise DicomSegError(f"{path}: not a DICOM SEG file (a DICOM file of SOP class Segmentation Storage)")
    try:
        seg = hd.seg.segread(path)
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, KeyError, AttributeError, TypeError) as exc:
        raise DicomSegError(f"{path}: cannot be read as a DICOM SEG: {exc}") from exc
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        raise DicomSegError(
            f"{path}: a FRACTIONAL segmentation (probabilities or occupancy) is not supported; masks are binary"
        )
    return seg


def _grid(seg: Segmentation, extras: SegExtras | None, path: Path) -> VolumeGeometry:
    """The case's grid in our axis order (column, row, slice), right-handed: the frames' volume, or the full grid
    that ``extras`` give, which must hold the frames."""
    hd, _ = _dicom()
    try:
        frames = seg.get_volume_geometry()
    except (ValueError, KeyError, AttributeError) as exc:
        raise DicomSegError(f"{path}: inconsistent frame geometry: {exc}") from exc
    if frames is None:
        raise DicomSegError(f"{path}: its frames do not form a regularly spaced 3-D volume (inconsistent geometry)")
    ours = frames.permute_spatial_axes([2, 1, 0]).ensure_handedness("RIGHT_HANDED", flip_axis=2)
    if extras is None:
        return ours
    affine = ours.affine.copy()
    affine[:3, 3] = extras.origin
    grid = hd.VolumeGeometry(affine, (*ours.spatial_shape[:2], extras.slices), "PATIENT", frames.frame_of_reference_uid)
    corners = np.array([ours.position, ours.map_indices_to_reference(np.array([ours.spatial_shape]) - 1)[0]])
    indices = np.round(grid.map_reference_to_indices(corners, round_output=False))
    if (indices < 0).any() or (indices >= grid.spatial_shape).any():
        raise DicomSegError(
            f"{path}: inconsistent geometry: its frames span {_text(corners[0])} to {_text(corners[1])}, outside the grid "
            f"of {extras.slices} slices from {_text(extras.origin)} that its ImageComments give"
        )
    return grid


def _segment_label(seg: Segmentation, number: int, path: Path) -> str:
    label = str(seg.get_segment_description(number).segment_label)
    if not label:
        raise DicomSegError(f"{path}: segment {number} has no SegmentLabel to name its organ")
    return label


def _segment_rgb(seg: Segmentation, number: int) -> tuple[int, int, int] | None:
    """The segment's RecommendedDisplayCIELabValue as RGB (clipped to the RGB gamut), None if it has none."""
    lab = seg.get_segment_description(number).get("RecommendedDisplayCIELabValue")
    if lab is None:
        return None
    hd, _ = _dicom()
    red, green, blue = hd.color.CIELabColor.from_dicom_value([int(v) for v in lab]).to_rgb(clip=True)
    return round(red), round(green), round(blue)


class SegmentMasks(Mapping[str, np.ndarray]):
    """A SEG's segments as organ name -> bool mask on ``grid``.

    highdicom decodes the segments on creation, one at a time (its frame index serves only
    the thread that built it); each is kept cropped to the box around its voxels, so a
    mask is a full volume only while it is being read.
    """

    def __init__(self, seg: Segmentation, numbers: dict[str, int], grid: VolumeGeometry) -> None:
        self.shape = grid.spatial_shape
        self.crops: dict[str, tuple[Box, np.ndarray] | None] = {}  # None: an empty segment
        for name, number in numbers.items():
            mask = seg.get_volume(segment_numbers=[number], dtype=bool).match_geometry(grid).array[..., 0]
            box = occupied_box(mask)
            self.crops[name] = None if box is None else (box, mask[box].copy())

    def __getitem__(self, name: str) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        if (crop := self.crops[name]) is not None:
            mask[crop[0]] = crop[1]
        return mask

    def __iter__(self) -> Iterator[str]:
        return iter(self.crops)

    def __len__(self) -> int:
        return len(self.crops)
