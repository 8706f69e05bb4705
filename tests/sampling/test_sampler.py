"""PatchSampler: patches equal to crops of the case, nnU-Net's border padding, foreground draws, seeds, workers."""

from __future__ import annotations

import json
import multiprocessing
import pickle
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from medmask_store import MaskArchive, StorageSettings
from medmask_store.cli.main import main
from medmask_store.errors import OrganNotFound
from medmask_store.model.geometry import nifti_affine
from medmask_store.phantom import make_phantom
from medmask_store.sampling import PAD_LABEL, Patch, PatchSampler
from medmask_store.storage.case import Case

SHAPE = (96, 80, 64)


@pytest.fixture
def stored(archive_path: Path) -> Path:
    with MaskArchive(archive_path, "w") as archive:
        for seed, case_id in enumerate(("ct01", "ct02", "ct03")):
            masks, space = make_phantom(shape=SHAPE, n_organs=6, seed=seed)
            archive.add_case(case_id, masks, space=space, meta={"site": "A" if seed else "B"})
    return archive_path


def padded(volume: np.ndarray, patch: Patch, fill: object) -> np.ndarray:
    """The patch's box cut from a whole volume, ``fill`` outside it: what the sampler must return."""
    out = np.full(patch.data.shape[-3:], fill, dtype=volume.dtype)
    inside = tuple(slice(max(s.start, 0), min(s.stop, n)) for s, n in zip(patch.box, volume.shape))
    out[tuple(slice(i.start - s.start, i.stop - s.start) for i, s in zip(inside, patch.box))] = volume[inside]
    return out


def test_label_patches_are_the_cases_labels_padded_with_minus_one(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        sampler = PatchSampler(archive, (48, 40, 80), foreground_fraction=0.5, seed=3)  # z is larger than the volume
        labels = {case_id: archive[case_id].read_labels().astype(np.int16) for case_id in archive.case_ids()}
        for _ in range(12):
            patch = sampler.sample()
            assert patch.data.dtype == np.int16 and patch.data.shape == (48, 40, 80)
            np.testing.assert_array_equal(patch.data, padded(labels[patch.case_id], patch, PAD_LABEL))
            if patch.organ is None:  # 16 voxels too many: 8 of padding on each side, as nnU-Net
                assert patch.box[2] == slice(-8, 72)
                assert (patch.data[:, :, :8] == PAD_LABEL).all() and (patch.data[:, :, -8:] == PAD_LABEL).all()
            else:  # centred on the organ, no lower than nnU-Net's lowest start
                assert patch.start[2] >= -8


def test_patch_geometry_is_the_case_geometry_moved_to_the_patch(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        patch = PatchSampler(archive, 32, seed=1).sample("ct02")
        space = archive["ct02"].space
    assert tuple(patch.space.shape) == (32, 32, 32)
    np.testing.assert_allclose(patch.space.origin, space.to_world_transform.apply_point(np.array([patch.start]))[0])
    np.testing.assert_allclose(patch.space.spacing, space.spacing)


def test_foreground_patches_are_centred_on_a_voxel_of_the_drawn_organ(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        sampler = PatchSampler(archive, 16, foreground_fraction=1.0, class_probabilities={"rib_right_12": 1.0}, seed=7)
        for _ in range(10):
            patch = sampler.sample()
            assert patch.organ == "rib_right_12"
            voxels = np.argwhere(archive[patch.case_id].read_organ("rib_right_12"))
            # centred on one of them, raised to the lowest start (0 here): nnU-Net's rule, which sets no upper bound
            starts = {tuple(int(v) for v in start) for start in np.maximum(voxels - 8, 0)}
            assert patch.start in starts
            assert (patch.data == archive[patch.case_id].mapping["rib_right_12"]).any()  # layers are painted over


def test_uniform_and_foreground_shares_follow_foreground_fraction(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        organs = [PatchSampler(archive, 8, foreground_fraction=f, seed=0).sample().organ for f in (0.0, 1.0)]
        drawn = [PatchSampler(archive, 8, foreground_fraction=0.25, seed=s).sample().organ for s in range(200)]
    assert organs[0] is None and organs[1] is not None
    assert 0.15 < sum(o is not None for o in drawn) / len(drawn) < 0.35


def test_organ_channels_keep_overlaps_exact(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        case = archive["ct01"]
        host = next(name for name in case.organs if name != "rib_right_12" and case.overlapping_organs(name))
        wanted = [host, "rib_right_12"]
        sampler = PatchSampler(archive, 24, cases=["ct01"], organs=wanted, foreground_fraction=1.0, seed=2,
                               class_probabilities={"rib_right_12": 1.0})  # fmt: skip
        patch = sampler.sample()
        masks = [case.read_organ(name) for name in wanted]
    assert patch.data.dtype == np.bool_ and patch.data.shape == (2, 24, 24, 24)
    for channel, mask in zip(patch.data, masks):
        np.testing.assert_array_equal(channel, padded(mask, patch, False))
    assert (patch.data[0] & patch.data[1]).any()  # the rib lies inside its host: both channels hold those voxels


def test_same_seed_same_patches_other_seed_other_patches(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        runs = [[(p.case_id, p.start, p.organ) for p, _ in zip(PatchSampler(archive, 16, seed=s), range(8))] for s in (5, 5, 6)]
    assert runs[0] == runs[1]
    assert runs[0] != runs[2]


def test_cases_from_a_list_or_a_query(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        assert {PatchSampler(archive, 8, cases=["ct03"], seed=s).sample().case_id for s in range(5)} == {"ct03"}
        assert PatchSampler(archive, 8, cases="site == 'B'").case_ids == ["ct01"]
        with pytest.raises(ValueError, match="no cases to sample from \\(query \"site == 'C'\"\\)"):
            PatchSampler(archive, 8, cases="site == 'C'")


def test_bad_arguments_are_refused(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        with pytest.raises(ValueError, match="patch_size must be one positive int or three"):
            PatchSampler(archive, (8, 8))
        with pytest.raises(ValueError, match="foreground_fraction must be in"):
            PatchSampler(archive, 8, foreground_fraction=1.5)
        with pytest.raises(OrganNotFound, match="class_probabilities names organs the case does not have: \\['brain'\\]"):
            PatchSampler(archive, 8, foreground_fraction=1.0, class_probabilities={"brain": 1.0}).sample()


def sample_in_worker(sampler_and_seed: tuple[PatchSampler, int]) -> tuple[str, tuple[int, int, int], bytes]:
    sampler, seed = sampler_and_seed
    sampler.reseed(seed)
    patch = sampler.sample()
    return patch.case_id, patch.start, patch.data.tobytes()


def test_samplers_run_in_spawned_workers_and_reproduce_per_worker_seed(stored: Path) -> None:
    with MaskArchive(stored) as archive:
        sampler = PatchSampler(archive, 16, foreground_fraction=0.5)
        sampler.sample()  # a case is open in this process: it must not travel
        expected = []
        for seed in (11, 12):
            local = pickle.loads(pickle.dumps(sampler))
            local.reseed(seed)
            patch = local.sample()
            expected.append((patch.case_id, patch.start, patch.data.tobytes()))
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            assert pool.map(sample_in_worker, [(sampler, 11), (sampler, 12)]) == expected


def test_sample_command_writes_what_the_sampler_draws(stored: Path, tmp_path: Path) -> None:
    out = tmp_path / "patches"
    args = ["sample", str(stored), "--patch", "24,16,32", "--n", "3", "--out", str(out), "--foreground", "0.5", "--seed", "4"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    with MaskArchive(stored) as archive:
        sampler = PatchSampler(archive, (24, 16, 32), foreground_fraction=0.5, seed=4)
        for index in range(3):
            patch = sampler.sample()
            np.testing.assert_array_equal(np.load(out / f"{index:03d}.npy"), patch.data)
            described = json.loads((out / f"{index:03d}.json").read_text())
            assert (described["case_id"], tuple(described["start"]), described["organ"]) == (
                patch.case_id, patch.start, patch.organ,
            )  # fmt: skip
            np.testing.assert_allclose(described["affine"], nifti_affine(patch.space))
            assert f"{index:03d}: case {patch.case_id}, start {list(patch.start)}" in result.output


def test_sample_command_organ_channels_and_bad_patch(stored: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["sample", str(stored), "--patch", "8", "--n", "1", "--organs", "liver,rib_right_12",
                                       "--out", str(tmp_path / "o")])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert np.load(tmp_path / "o" / "000.npy").shape == (2, 8, 8, 8)
    result = CliRunner().invoke(main, ["sample", str(stored), "--patch", "8,8", "--out", str(tmp_path / "b")])
    assert result.exit_code == 2 and "give one edge or three" in result.output


def test_foreground_centres_are_drawn_uniformly_from_the_organs_voxels(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    shape, edge = (40, 40, 40), 16  # chunks 3 x 3 x 3, the last ones 8 voxels wide
    target = np.zeros(shape, dtype=bool)
    target[4:10, 4:9, 5] = True  # 30 voxels in chunk (0, 0, 0)
    target[33:38, 34:36, 38] = True  # 10 in the corner chunk (2, 2, 2)
    other = np.zeros(shape, dtype=bool)
    other[10:30, 10:30, 10:30] = True
    with MaskArchive(tmp_path / "a.zarr", "w", settings=StorageSettings(chunk_size=edge)) as archive:
        archive.add_case("c", {"target": target, "other": other})
    counted = []
    organ_chunk_voxels = Case.organ_chunk_voxels
    monkeypatch.setattr(Case, "organ_chunk_voxels", lambda self, name: counted.append(name) or organ_chunk_voxels(self, name))
    monkeypatch.setattr(Case, "read_organ", None)  # no scan of the organ's box
    with MaskArchive(tmp_path / "a.zarr") as archive:
        sampler = PatchSampler(archive, 4, foreground_fraction=1.0, class_probabilities={"target": 1.0}, seed=4)
        centres = Counter(tuple(s + 2 for s in sampler.sample().start) for _ in range(4000))
    assert counted == ["target"]  # the counts are read once per open case
    assert set(centres) == {tuple(int(c) for c in v) for v in np.argwhere(target)}  # every voxel, and only those
    assert abs(sum(n for v, n in centres.items() if v[0] > 30) / 4000 - 0.25) < 0.02  # a quarter in the corner chunk
    assert 60 < min(centres.values()) and max(centres.values()) < 145  # ~100 draws per voxel
