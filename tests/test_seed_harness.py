"""The seed document's benchmark harness (medmask vs NIfTI vs NPZ), run against medmask_store.

``run_benchmark`` and the binary / multi-label loops are the seed's code unchanged
(``# fmt: off`` keeps them verbatim), except the import line
(``from medmask_store import SegmentationMask``) and the data source: a synthetic
phantom written as NIfTI files into ``tmp_path``, and ``display(...)`` replaced
by collecting the DataFrames.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from medmask_store import SegmentationMask
from medmask_store.model.geometry import nifti_affine, space_from_nifti_affine
from medmask_store.phantom import ORGAN_NAMES, make_phantom

# Every file the seed's loops open; the phantom's first ellipsoids are saved under these names.
SEED_FILES = (
    "gluteus_maximus_right", "urinary_bladder", "colon", "iliopsoas_left", "iliac_artery_left", "small_bowel",
    "gluteus_maximus_left", "gluteus_medius_left", "gluteus_medius_right",
    "femur_left", "femur_right", "hip_left", "hip_right",
)  # fmt: skip


# fmt: off
def run_benchmark(format_type, data, space=None, label_mapping=None, original_path=None):
    stats = {'size': 0, 'encode_time': 0, 'decode_time': 0}
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp_path = Path(tmpdir) / f"tempfile.{format_type.split('_')[0]}"
        start = time.time()
        if format_type == 'nifti':
            if original_path:
                stats['size'] = original_path.stat().st_size
            else:
                affine = np.eye(4)
                nib.save(nib.Nifti1Image(data.astype(np.uint8), affine), tmp_path.with_suffix('.nii.gz'))
                stats['size'] = tmp_path.with_suffix('.nii.gz').stat().st_size
        elif format_type == 'npz':
            np.savez_compressed(tmp_path, mask=data)
            stats['size'] = tmp_path.stat().st_size
        elif format_type == 'medmask':
            SegmentationMask(data, label_mapping, space=space).save(tmp_path)
            stats['size'] = tmp_path.stat().st_size
        stats['encode_time'] = (time.time()-start)*1000
        if stats['size'] > 0:
            start = time.time()
            if format_type == 'npz':
                _ = np.load(tmp_path)['mask']
            elif format_type == 'medmask':
                loaded = SegmentationMask.load(tmp_path)
                if label_mapping:
                    for name in label_mapping:
                        _ = loaded.get_binary_mask_by_names(name)
            stats['decode_time'] = (time.time()-start)*1000
    return stats
# fmt: on


@pytest.fixture
def mask_dir(tmp_path: Path) -> Path:
    """A phantom case as one ``<organ>.nii.gz`` per organ, plus ``nonzero_masks.txt``, like the seed's s0000."""
    masks, space = make_phantom(shape=(70, 60, 50), n_organs=len(SEED_FILES), n_empty=0, seed=3)
    folder = tmp_path / "s0000"
    folder.mkdir()
    affine = nifti_affine(space)
    for seed_name, organ in zip(SEED_FILES, ORGAN_NAMES):
        nib.save(nib.Nifti1Image(masks[organ].astype(np.uint8), affine), folder / f"{seed_name}.nii.gz")
    (folder / "nonzero_masks.txt").write_text("".join(f"{n}.nii.gz\n" for n in SEED_FILES))
    return folder


@pytest.fixture
def saved_and_loaded(monkeypatch: pytest.MonkeyPatch) -> list[tuple[np.ndarray, np.ndarray]]:
    """(array saved, array loaded back) for every ``SegmentationMask.save`` / ``load`` pair the harness makes."""
    pairs: list[tuple[np.ndarray, np.ndarray]] = []
    save, load = SegmentationMask.save, SegmentationMask.load.__func__  # type: ignore[attr-defined]

    def recording_save(self, path):
        pairs.append((self.data.copy(), None))
        save(self, path)

    def recording_load(cls, path, case_id=None):
        loaded = load(cls, path, case_id)
        pairs[-1] = (pairs[-1][0], loaded.data.copy())
        return loaded

    monkeypatch.setattr(SegmentationMask, "save", recording_save)
    monkeypatch.setattr(SegmentationMask, "load", classmethod(recording_load))
    return pairs


# The seed's own pandas code sets a str into a float Series (the "Average" row); pandas 3 deprecates it.
@pytest.mark.filterwarnings("ignore:Setting an item of incompatible dtype:DeprecationWarning")
def test_seed_harness(mask_dir, saved_and_loaded):
    frames = []

    # fmt: off
    with open(mask_dir / 'nonzero_masks.txt') as f:
        valid_files = [line.strip() for line in f]
    print(f"Loaded {len(valid_files)} masks")

    binary_files = [
        'gluteus_maximus_right.nii.gz',
        'urinary_bladder.nii.gz',
        'colon.nii.gz',
        'iliopsoas_left.nii.gz',
        'iliac_artery_left.nii.gz',
        'small_bowel.nii.gz'
    ]
    rows = []
    for fname in binary_files:
        original_path = mask_dir / fname
        nii = nib.load(original_path)
        data = nii.get_fdata().astype(np.uint8)
        space = space_from_nifti_affine(nii.affine, nii.shape)
        organ = fname.replace('.nii.gz', '')
        stats_nifti = run_benchmark('nifti', data=data, original_path=original_path)
        stats_npz = run_benchmark('npz', data=data)
        stats_medmask = run_benchmark('medmask', data=data, space=space, label_mapping={organ:1})
        rows.append({
            'Mask': organ,
            'Nonzero': int(np.count_nonzero(data)),
            'NIfTI (KB)': stats_nifti['size']/1024,
            'NPZ (KB)': stats_npz['size']/1024,
            'MedMask (KB)': stats_medmask['size']/1024,
            'NPZ encode (ms)': stats_npz['encode_time'],
            'MedMask encode (ms)': stats_medmask['encode_time'],
            'NPZ decode (ms)': stats_npz['decode_time'],
            'MedMask decode (ms)': stats_medmask['decode_time']
        })
    df_binary = pd.DataFrame(rows)
    if not df_binary.empty:
        avg = df_binary.select_dtypes(include=np.number).mean()
        avg['Mask'] = 'Average'
        df_binary = pd.concat([df_binary, avg.to_frame().T], ignore_index=True)
    df_binary['MedMask vs NIfTI'] = df_binary['NIfTI (KB)'] / df_binary['MedMask (KB)']
    df_binary['NPZ vs NIfTI'] = df_binary['NIfTI (KB)'] / df_binary['NPZ (KB)']
    frames.append(df_binary)

    test_groups = [
        {'name': 'Gluteus muscles', 'files': ['gluteus_maximus_left.nii.gz','gluteus_maximus_right.nii.gz','gluteus_medius_left.nii.gz','gluteus_medius_right.nii.gz']},
        {'name': 'Femur + Hip', 'files': ['femur_left.nii.gz','femur_right.nii.gz','hip_left.nii.gz','hip_right.nii.gz']},
        {'name': 'Pelvic organs', 'files': ['urinary_bladder.nii.gz','colon.nii.gz','small_bowel.nii.gz']}
    ]
    results = []
    for group in test_groups:
        first_img = nib.load(mask_dir / group['files'][0])
        space = space_from_nifti_affine(first_img.affine, first_img.shape)
        multi = np.zeros(first_img.shape, dtype=np.uint8)
        mapping = {}
        for idx, fname in enumerate(group['files'], start=1):
            fpath = mask_dir / fname
            if not fpath.exists():
                continue
            data = nib.load(fpath).get_fdata().astype(np.uint8)
            multi[data > 0] = idx
            mapping[fname.replace('.nii.gz','')] = idx
        stats_nifti = run_benchmark('nifti', data=multi, space=space)
        stats_npz = run_benchmark('npz', data=multi)
        stats_medmask = run_benchmark('medmask', data=multi, space=space, label_mapping=mapping)
        results.append({
            'Group': group['name'],
            'Labels': len(group['files']),
            'NIfTI (KB)': stats_nifti['size']/1024,
            'NPZ (KB)': stats_npz['size']/1024,
            'MedMask (KB)': stats_medmask['size']/1024,
            'NPZ encode (ms)': stats_npz['encode_time'],
            'MedMask encode (ms)': stats_medmask['encode_time'],
            'NPZ decode (ms)': stats_npz['decode_time'],
            'MedMask decode (ms)': stats_medmask['decode_time']
        })
    df_multi = pd.DataFrame(results)
    if not df_multi.empty:
        avg = df_multi.select_dtypes(include=np.number).mean()
        avg['Group'] = 'Average'
        df_multi = pd.concat([df_multi, avg.to_frame().T], ignore_index=True)
    df_multi['MedMask vs NIfTI'] = df_multi['NIfTI (KB)'] / df_multi['MedMask (KB)']
    df_multi['NPZ vs NIfTI'] = df_multi['NIfTI (KB)'] / df_multi['NPZ (KB)']
    frames.append(df_multi)
    # fmt: on

    assert valid_files == [f"{n}.nii.gz" for n in SEED_FILES]
    assert [len(f) for f in frames] == [len(binary_files) + 1, len(test_groups) + 1]  # + the Average row
    for frame in frames:
        sizes = frame[["NIfTI (KB)", "NPZ (KB)", "MedMask (KB)"]].astype(float)
        assert (sizes > 0).all().all(), frame
        assert np.isfinite(frame["MedMask vs NIfTI"].astype(float)).all()
    # one save + load per medmask benchmark, each giving back the exact array
    assert len(saved_and_loaded) == len(binary_files) + len(test_groups)
    for saved, loaded in saved_and_loaded:
        assert loaded is not None
        assert loaded.dtype == saved.dtype == np.uint8
        np.testing.assert_array_equal(loaded, saved)
    assert saved_and_loaded[-1][0].max() == 3  # the pelvic group: three labels painted
