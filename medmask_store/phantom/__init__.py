"""Synthetic phantoms for demos, tests and benchmarks.

``make_phantom`` draws a few random ellipsoids on a small grid; :class:`CtPhantom`
(in :mod:`.ct`) lays out TotalSegmentator's 117 classes on a CT grid.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from spacetransformer import Space

from medmask_store.phantom.ct import CtPhantom, make_ct_phantom

__all__ = ["ORGAN_NAMES", "CtPhantom", "make_ct_phantom", "make_phantom"]

ORGAN_NAMES = (
    "liver", "spleen", "kidney_left", "kidney_right", "stomach", "pancreas", "aorta",
    "inferior_vena_cava", "urinary_bladder", "gallbladder", "sacrum", "hip_left", "hip_right",
    "femur_left", "femur_right", "colon", "small_bowel", "duodenum", "esophagus", "heart",
    "lung_upper_lobe_left", "lung_upper_lobe_right", "vertebrae_L1", "vertebrae_L2",
)  # fmt: skip


def make_phantom(
    shape: tuple[int, int, int] = (96, 80, 64),
    n_organs: int = 10,
    n_empty: int = 3,
    seed: int = 0,
    spacing: tuple[float, float, float] = (1.5, 1.5, 2.0),
) -> tuple[dict[str, np.ndarray], Space]:
    """Binary masks of ``n_organs`` random ellipsoids plus ``n_empty`` empty masks.

    The first organ holds a small ``rib_right_12`` entirely inside it, so every
    phantom with at least one organ has an overlap (as in TotalSegmentator's
    rib_right_12 inside sacrum); random ellipsoids add more.
    """
    if n_organs + n_empty > len(ORGAN_NAMES):
        raise ValueError(f"at most {len(ORGAN_NAMES)} organs and empty masks in total")
    rng = np.random.default_rng(seed)
    grid = np.indices(shape, sparse=True)
    masks: dict[str, np.ndarray] = {}
    for name in ORGAN_NAMES[:n_organs]:
        radii = rng.uniform(0.08, 0.25, size=3) * np.array(shape)
        center = rng.uniform(0.15, 0.85, size=3) * np.array(shape)
        masks[name] = _ellipsoid(grid, center, radii)
    if n_organs:
        host = masks[ORGAN_NAMES[0]]
        center = np.argwhere(host).mean(axis=0) if host.any() else np.array(shape) / 2
        masks["rib_right_12"] = _ellipsoid(grid, center, np.full(3, 2.5)) & host
    for name in ORGAN_NAMES[n_organs : n_organs + n_empty]:
        masks[name] = np.zeros(shape, dtype=bool)
    space = Space(shape=shape, spacing=spacing, origin=(-100.0, -80.0, 20.0))
    return masks, space


def _ellipsoid(grid: Sequence[np.ndarray], center: np.ndarray, radii: np.ndarray) -> np.ndarray:
    distance = sum(((axis - c) / r) ** 2 for axis, c, r in zip(grid, center, radii))
    return np.asarray(distance <= 1.0)
