"""The CT phantom on a reduced grid: TotalSegmentator's classes, plausible anatomy, determinism, laziness."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pytest

from medmask_store.io.totalsegmentator import TOTAL_CLASSES
from medmask_store.phantom import CtPhantom, make_ct_phantom
from medmask_store.phantom.anatomy import OVERLAPS

# 422 × 422 × 560 mm from below the hips to the heart: an abdominal scan, so head and neck are empty.
SHAPE, SPACING, START, SEED = (96, 96, 80), (4.4, 4.4, 7.0), -120.0, 1
#: Organ -> plausible volume (mL) of an adult; the phantom must land inside at any resolution.
VOLUMES_ML = {
    "liver": (1100, 2200), "spleen": (100, 350), "kidney_left": (100, 220), "kidney_right": (100, 220),
    "urinary_bladder": (100, 400), "vertebrae_L3": (30, 90), "gluteus_maximus_left": (400, 1000),
    "hip_right": (150, 400), "aorta": (30, 250), "rib_left_9": (5, 30),
}  # fmt: skip


@pytest.fixture(scope="module")
def phantom() -> CtPhantom:
    return CtPhantom(SHAPE, seed=SEED, spacing=SPACING, start=START)


@pytest.fixture(scope="module")
def masks() -> dict[str, np.ndarray]:
    return make_ct_phantom(SHAPE, seed=SEED, spacing=SPACING, start=START)[0]


def millilitres(mask: np.ndarray, spacing: tuple[float, ...]) -> float:
    return float(mask.sum() * np.prod(spacing) / 1000)


def centre(mask: np.ndarray) -> np.ndarray:
    return np.argwhere(mask).mean(axis=0)


def test_classes_are_totalsegmentators(phantom: CtPhantom, masks: dict[str, np.ndarray]) -> None:
    assert list(phantom) == list(TOTAL_CLASSES) == list(masks)
    assert len(phantom) == 117
    assert all(mask.dtype == np.bool_ and mask.shape == SHAPE for mask in masks.values())
    assert phantom.space.shape == SHAPE and phantom.space.spacing == SPACING


def test_lazy_masks_equal_eager_ones(phantom: CtPhantom, masks: dict[str, np.ndarray]) -> None:
    for name, mask in phantom.items():
        assert np.array_equal(mask, masks[name]), name


@pytest.mark.parametrize("organ", ["liver", "rib_left_7", "brain"])
def test_crop_is_the_mask_in_its_box(phantom: CtPhantom, masks: dict[str, np.ndarray], organ: str) -> None:
    box, crop = phantom.crop(organ)
    assert crop.sum() == masks[organ].sum()
    np.testing.assert_array_equal(masks[organ][box], crop)


def test_abdominal_scan_has_empty_and_filled_masks(masks: dict[str, np.ndarray]) -> None:
    filled = {name for name, mask in masks.items() if mask.any()}
    assert 40 <= len(filled) <= 100
    assert {"brain", "skull", "thyroid_gland", "vertebrae_C1"}.isdisjoint(filled)  # above the field of view
    assert {"liver", "sacrum", "femur_left", "vertebrae_L1", "rib_right_10"} <= filled


def test_only_the_known_pairs_overlap(masks: dict[str, np.ndarray]) -> None:
    filled = [name for name, mask in masks.items() if mask.any()]
    overlapping = {frozenset((a, b)) for a, b in combinations(filled, 2) if (masks[a] & masks[b]).any()}
    assert frozenset(("liver", "portal_vein_and_splenic_vein")) in overlapping
    assert overlapping <= OVERLAPS


def test_stray_rib_label_inside_the_sacrum() -> None:
    """A few voxels, as in real data (13 in s0000): a grid finer than the module's shows them."""
    finer = CtPhantom((384, 384, 320), seed=SEED, spacing=(1.1, 1.1, 1.75), start=START)
    assert 0 < shared_voxels(finer, "sacrum", "rib_right_12") < 100


def shared_voxels(phantom: CtPhantom, a: str, b: str) -> int:
    """Voxels in both masks, from the organs' crops (no whole volume)."""
    (box_a, mask_a), (box_b, mask_b) = phantom.crop(a), phantom.crop(b)
    common = [slice(max(p.start, q.start), min(p.stop, q.stop)) for p, q in zip(box_a, box_b)]
    if any(s.start >= s.stop for s in common):
        return 0
    a_part = mask_a[tuple(slice(c.start - p.start, c.stop - p.start) for c, p in zip(common, box_a))]
    b_part = mask_b[tuple(slice(c.start - q.start, c.stop - q.start) for c, q in zip(common, box_b))]
    return int((a_part & b_part).sum())


@pytest.mark.parametrize("organ", VOLUMES_ML)
def test_sizes_are_adult(masks: dict[str, np.ndarray], organ: str) -> None:
    low, high = VOLUMES_ML[organ]
    assert low <= millilitres(masks[organ], SPACING) <= high


def test_volume_does_not_depend_on_resolution(phantom: CtPhantom) -> None:
    finer = CtPhantom((192, 192, 160), seed=SEED, spacing=(2.2, 2.2, 3.5), start=START)
    for organ in ("liver", "kidney_left", "urinary_bladder"):
        coarse_ml, fine_ml = (millilitres(p.crop(organ)[1], p.space.spacing) for p in (phantom, finer))
        assert coarse_ml == pytest.approx(fine_ml, rel=0.1), organ


def test_anatomy_is_in_place(masks: dict[str, np.ndarray]) -> None:
    # Space axes: the first points to the patient's left, the third to the head.
    for organ in ("kidney", "femur", "hip", "iliopsoas", "gluteus_maximus"):
        assert centre(masks[f"{organ}_left"])[0] > centre(masks[f"{organ}_right"])[0], organ
    heights = [centre(masks[f"vertebrae_{name}"])[2] for name in ("L5", "L4", "L3", "L2", "L1", "T12")]
    assert heights == sorted(heights)
    assert centre(masks["liver"])[2] > centre(masks["urinary_bladder"])[2]


def test_seed_decides_the_body(phantom: CtPhantom) -> None:
    again = CtPhantom(SHAPE, seed=SEED, spacing=SPACING, start=START)
    other = CtPhantom(SHAPE, seed=SEED + 1, spacing=SPACING, start=START)
    for organ in ("liver", "small_bowel", "rib_left_7"):
        np.testing.assert_array_equal(again[organ], phantom[organ], err_msg=organ)
        assert not np.array_equal(other[organ], phantom[organ]), organ


def test_default_grid_is_a_ct() -> None:
    space = CtPhantom(seed=4).space
    assert space.shape == (512, 512, 450)
    assert 0.7 <= space.spacing[0] == space.spacing[1] <= 0.9
    assert 1.0 <= space.spacing[2] <= 1.5
