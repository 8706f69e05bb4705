"""Quickstart: store a phantom case with overlapping organs, read organs back, export NIfTI;
then the compact preset and the seed-compatible SegmentationMask.

Run:  python examples/quickstart.py [WORKDIR]
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np

from medmask_store import MaskArchive, SegmentationMask, StorageSettings
from medmask_store.io.nifti import export_mask_folder
from medmask_store.phantom import make_phantom


def main(workdir: Path) -> None:
    masks, space = make_phantom()  # organ name -> bool mask, plus its Space
    with MaskArchive(workdir / "cases.zarr", mode="w") as archive:
        archive.add_case("phantom-001", masks, space=space, meta={"age": 61, "scanner": "synthetic"})

    with MaskArchive(workdir / "cases.zarr") as archive:  # mode "r": never writes
        case = archive["phantom-001"]
        print(case, case.meta)
        for name, stats in case.stats.items():
            print(f"{name:22} {case.representation(name):13} {stats.voxels:7} voxels {stats.volume_ml:8.2f} mL")
        assert all(np.array_equal(case.read_organ(name), mask) for name, mask in masks.items())
        files = export_mask_folder(case, workdir / "nifti")
        print(f"every organ bit-exact; exported {len(files)} NIfTI files to {workdir / 'nifti'}")
        # the same case, smaller: Crackle+Zstd label volume, packed into one file
        compact = archive.copy_to(workdir / "phantom.msk", settings=StorageSettings.preset("compact")).path
        print(f"compact preset, packed file: {compact.stat().st_size} bytes")

    # the medmask 0.1.3 API: one non-overlapping label volume per file
    labels = np.zeros(space.shape, np.uint8)
    labels[masks["liver"]] = 1
    labels[masks["spleen"] & ~masks["liver"]] = 2
    SegmentationMask(labels, {"liver": 1, "spleen": 2}, space=space).save(workdir / "liver_spleen.msk")
    loaded = SegmentationMask.load(workdir / "liver_spleen.msk")
    assert np.array_equal(loaded.get_binary_mask_by_names("liver"), masks["liver"])
    print(f"SegmentationMask round trip bit-exact: {loaded}")


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            main(Path(tmp))
