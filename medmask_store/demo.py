"""The demo: NIfTI folder -> archive -> NIfTI folder, with sizes and a bit-exact check."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medmask_store.io.nifti import AFFINE_ATOL, export_mask_folder, load_mask_folder, mask_files
from medmask_store.model.geometry import nifti_affine
from medmask_store.phantom import make_phantom
from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.layout import PRESETS, StorageSettings

COPIES = [(preset, suffix) for preset in PRESETS for suffix in (".zarr", ".zarr.zip", ".h5", ".msk")][1:]


@dataclass(frozen=True)
class DemoReport:
    source: Path
    archive: Path
    organs: int
    nonempty_organs: int
    overlapping_organs: tuple[str, ...]
    nifti_bytes: int
    import_seconds: float
    # (preset, suffix) -> (bytes, files) of the case in that archive format, the first one imported
    archive_bytes: dict[tuple[str, str], tuple[int, int]]
    mismatches: tuple[str, ...]

    @property
    def lossless(self) -> bool:
        return not self.mismatches


def folder_bytes(path: Path) -> tuple[int, int]:
    """Total size and number of files below ``path``."""
    files = [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files), len(files)


def write_phantom_folder(folder: Path) -> Path:
    """Write the built-in phantom as a TotalSegmentator-style NIfTI folder."""
    masks, space = make_phantom(shape=(160, 128, 112), n_organs=18, n_empty=5)
    folder.mkdir(parents=True, exist_ok=True)
    for name, mask in masks.items():
        nib.save(nib.Nifti1Image(mask.astype(np.uint8), nifti_affine(space)), folder / f"{name}.nii.gz")
    return folder


def compare_mask_folders(original: Path, exported: Path) -> list[str]:
    """Files whose voxels or affine differ between two mask folders (or that are missing)."""
    mismatches = []
    for path in mask_files(original):
        other = exported / path.name
        if not other.exists():
            mismatches.append(f"{path.name}: missing")
            continue
        a: Any = nib.load(path)
        b: Any = nib.load(other)
        if not np.allclose(a.affine, b.affine, atol=AFFINE_ATOL):
            mismatches.append(f"{path.name}: affine differs")
        elif not np.array_equal(np.asanyarray(a.dataobj), np.asanyarray(b.dataobj)):
            mismatches.append(f"{path.name}: voxels differ")
    return mismatches


def run_demo(workdir: Path, source: Path | None = None) -> DemoReport:
    """Import ``source`` (default: the phantom) into ``workdir/demo.zarr``, export it back, compare;
    then copy it to every backend with every preset and check every organ there too."""
    workdir = Path(workdir)
    source = Path(source) if source is not None else write_phantom_folder(workdir / "phantom")
    archive_path = workdir / "demo.zarr"
    start = time.perf_counter()
    case_data = load_mask_folder(source)
    with MaskArchive(archive_path, "w") as archive:
        case = archive.add_case(source.name, case_data)
        import_seconds = time.perf_counter() - start
        export_mask_folder(case, workdir / "exported")
    mismatches = compare_mask_folders(source, workdir / "exported")
    sizes = {("default", ".zarr"): folder_bytes(archive_path)}
    for preset, suffix in COPIES:
        with MaskArchive(archive_path) as archive:
            destination = workdir / f"demo-{preset}{suffix}"
            archive.copy_to(destination, mode="w", settings=StorageSettings.preset(preset))
            converted = destination
        sizes[preset, suffix] = folder_bytes(converted) if converted.is_dir() else (converted.stat().st_size, 1)
        with MaskArchive(converted) as archive:
            copy = archive[source.name]
            mismatches += [f"{preset} {suffix}: {n} differs" for n in copy.organs if not np.array_equal(
                copy.read_organ(n), case_data.organ_mask(n))]
    return DemoReport(
        source=source,
        archive=archive_path,
        organs=len(case.mapping),
        nonempty_organs=sum(s.voxels > 0 for s in case.stats.values()),
        overlapping_organs=case.info.layer_names,
        nifti_bytes=sum(p.stat().st_size for p in mask_files(source)),
        import_seconds=import_seconds,
        archive_bytes=sizes,
        mismatches=tuple(mismatches),
    )
