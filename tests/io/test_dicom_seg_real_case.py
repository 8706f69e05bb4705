"""DICOM SEG round trip of TotalSegmentator case s0000 (117 organs); skips when ../shared/data/s0000 is absent."""

from __future__ import annotations

from pathlib import Path

import highdicom as hd
import numpy as np
from dicom_series import write_ct_series

from medmask_store import MaskArchive
from medmask_store.io.dicom_seg import export_dicom_seg, load_dicom_seg
from medmask_store.io.nifti import load_mask_folder
from medmask_store.model.geometry import lps_affine


def test_s0000_round_trips_through_a_dicom_seg(real_case_dir: Path, tmp_path: Path) -> None:
    archive = MaskArchive(tmp_path / "archive.zarr", "w")
    case = archive.add_case("s0000", load_mask_folder(real_case_dir, labels="totalsegmentator"))
    write_ct_series(case.space, tmp_path / "ct")
    exported = export_dicom_seg(case, tmp_path / "s0000.dcm", tmp_path / "ct")
    back = archive.add_case("back", load_dicom_seg(exported))
    assert len(back.mapping) == 117 and back.mapping == case.mapping and back.colors == case.colors
    np.testing.assert_allclose(lps_affine(back.space), lps_affine(case.space), atol=1e-5)
    expected, got = case.read_organs(), back.read_organs()
    for name, mask in expected.items():
        np.testing.assert_array_equal(got[name], mask, err_msg=name)
    seg = hd.seg.segread(exported)  # TotalSegmentator's values are the segment numbers
    assert {seg.get_segment_description(value).segment_label: value for value in seg.segment_numbers} == case.mapping
