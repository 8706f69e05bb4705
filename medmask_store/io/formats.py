"""One entry point per direction: a case exported to any format by name or file name, and single-file cases imported.

Each format lives in its own module (:mod:`.nifti`, :mod:`.slicer`, :mod:`.dicom_seg`,
:mod:`.ome_zarr`); the optional libraries a format needs are imported when it is used.
"""

from __future__ import annotations

import dataclasses
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Literal, get_args

from medmask_store.errors import MaskStoreError, OrganNotFound

if TYPE_CHECKING:
    from medmask_store.model.case_data import CaseData
    from medmask_store.storage.case import Case

ExportFormat = Literal["nifti", "multilabel", "seg.nrrd", "dicom-seg", "ome-zarr"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = get_args(ExportFormat)
# The file name each single-file format is given inside an output folder, and recognised by.
SUFFIXES: dict[ExportFormat, tuple[str, ...]] = {
    "multilabel": (".nii.gz", ".nii"),
    "seg.nrrd": (".seg.nrrd",),
    "dicom-seg": (".dcm",),
    "ome-zarr": (".ome.zarr",),
}


class ExportError(MaskStoreError, ValueError):
    """An export was asked with options its format does not take, or an unknown format."""


def export_format_of(path: str | Path) -> ExportFormat:
    """The format a path's name asks for: ``.seg.nrrd``, ``.dcm``, ``.ome.zarr``, ``.nii.gz``; otherwise a folder of
    one NIfTI per organ."""
    name = Path(path).name.lower()
    return next((fmt for fmt, suffixes in SUFFIXES.items() if name.endswith(suffixes)), "nifti")


def export_case(
    case: Case,
    path: str | Path,
    format: ExportFormat | None = None,
    *,
    ct_series: str | Path | None = None,
    allow_overlap: bool = False,
    organs: Sequence[str] | None = None,
    progress: Callable[[Iterable[str]], Iterable[str]] = iter,
) -> list[Path]:
    """Write ``case`` in ``format`` (default: from ``path``'s name, see :func:`export_format_of`); the files written.

    For a single-file format, ``path`` is the file, or a folder to write ``<case><suffix>`` in;
    an earlier export there is replaced (an OME-Zarr export replaces an OME-Zarr image only).
    ``ct_series`` (DICOM SEG only, required there) is the folder of the CT series the
    segmentation refers to; ``allow_overlap`` (multilabel only) paints overlapping organs
    over their neighbours. ``organs`` exports those organs only (with their values, colours and
    overlaps); ``progress`` (nifti) wraps the organs written, e.g. ``tqdm``.
    """
    fmt = format or export_format_of(path)
    if fmt not in EXPORT_FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; choose one of {', '.join(EXPORT_FORMATS)}")
    if ct_series is not None and fmt != "dicom-seg":
        raise ExportError(f"a CT series is for DICOM SEG exports only, not {fmt}")
    if allow_overlap and fmt != "multilabel":
        raise ExportError(f"allow_overlap is for multilabel exports only, not {fmt}: {fmt} keeps overlapping organs")
    _check_organs(case, fmt, organs)
    path = Path(path)
    if fmt == "nifti":
        from medmask_store.io.nifti import export_mask_folder

        return export_mask_folder(case, path, organs, progress)
    if not path.name.lower().endswith(SUFFIXES[fmt]):
        path = path / f"{case.case_id}{SUFFIXES[fmt][0]}"
    if fmt == "multilabel":
        from medmask_store.io.nifti import export_multilabel

        return list(export_multilabel(case, path, allow_overlap=allow_overlap, organs=organs))
    with _with_organs(case, organs) as chosen:
        return _export_whole(chosen, path, fmt, ct_series)


def _export_whole(case: Case, path: Path, fmt: ExportFormat, ct_series: str | Path | None) -> list[Path]:
    """Every organ of ``case`` in one of the formats that write whole cases."""
    if fmt == "seg.nrrd":
        from medmask_store.io.slicer import export_seg_nrrd

        return [export_seg_nrrd(case, path)]
    if fmt == "dicom-seg":
        from medmask_store.io.dicom_seg import export_dicom_seg

        if ct_series is None:
            raise ExportError(
                f"a DICOM SEG refers to the CT series it segments: give the folder of case {case.case_id!r}'s CT series"
            )
        return [export_dicom_seg(case, path, ct_series)]
    from medmask_store.io.ome_zarr import export_ome_zarr

    return [export_ome_zarr(case, path, overwrite=True)]  # an earlier OME-Zarr export only, never another folder


@contextmanager
def _with_organs(case: Case, organs: Sequence[str] | None) -> Iterator[Case]:
    """``case``, or with ``organs`` a copy of it holding those organs only (stored in a temporary ``.msk``: the
    exporters read stored cases)."""
    if organs is None:
        yield case
        return
    from medmask_store.model.case_data import CaseData
    from medmask_store.storage.archive import MaskArchive

    names = list(dict.fromkeys(organs))
    data = CaseData.from_masks(
        case.read_organs(names), space=case.space, mapping={n: case.mapping[n] for n in names}, meta=case.meta
    )
    data = dataclasses.replace(data, colors={n: case.colors[n] for n in names})
    with tempfile.TemporaryDirectory() as folder, MaskArchive(Path(folder) / "organs.msk", "w") as archive:
        yield archive.add_case(case.case_id, data)


def _check_organs(case: Case, fmt: ExportFormat, organs: Sequence[str] | None) -> None:
    """Chosen organs must be the case's."""
    if organs is None:
        return
    if not organs:
        raise ExportError("no organs chosen: name at least one")
    unknown = [name for name in organs if name not in case.mapping]
    if unknown:
        shown = ", ".join(list(case.mapping)[:10]) + (", ..." if len(case.mapping) > 10 else "")
        raise OrganNotFound(f"case {case.case_id!r} has no organ {', '.join(map(repr, unknown))}; it has {shown}")


def single_case_loader(path: Path) -> Callable[[], CaseData] | None:
    """How to load ``path`` if it is one case in a format that names its organs (a 3D Slicer ``.seg.nrrd`` or
    DICOM SEG file, an OME-Zarr image folder); None otherwise."""
    from functools import partial

    from medmask_store.io.dicom_seg import is_dicom_seg, load_dicom_seg
    from medmask_store.io.ome_zarr import is_ome_zarr, load_ome_zarr
    from medmask_store.io.slicer import is_seg_nrrd, load_seg_nrrd

    if path.is_dir():
        return partial(load_ome_zarr, path) if is_ome_zarr(path) else None
    if is_seg_nrrd(path):
        return partial(load_seg_nrrd, path)
    if is_dicom_seg(path):
        return partial(load_dicom_seg, path)
    return None


def case_id_of(path: Path) -> str:
    """A single-case source's id: its name without the format's suffix."""
    name = path.name
    for suffix in (*SUFFIXES["seg.nrrd"], *SUFFIXES["dicom-seg"], *SUFFIXES["ome-zarr"], ".zarr"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name
