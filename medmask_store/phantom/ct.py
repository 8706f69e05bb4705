"""A TotalSegmentator-like CT case: the 117 ``total`` masks of one body plan on a CT grid, one organ at a time."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence

import numpy as np
from spacetransformer import Space

from medmask_store.io.totalsegmentator import TOTAL_CLASSES
from medmask_store.model.voxels import occupied_box
from medmask_store.phantom.anatomy import OVERLAPS, body_plan
from medmask_store.phantom.shapes import Axes, Bounds, Box, paint, window, within

#: Slices rasterized at once: the memory one organ needs follows its cross-section, not its length.
SLAB = 64
#: In-plane field of view (mm) and slice spacings a seed picks from when no spacing is given.
FIELD_OF_VIEW = (360.0, 460.0)
SLICE_SPACINGS = (1.0, 1.25, 1.5)
#: Lowest slice, mm above the femoral heads: scans start between the thighs and the lower lumbar spine.
SCAN_START = (-150.0, 100.0)


class CtPhantom(Mapping[str, np.ndarray]):
    """Organ name -> bool mask of the whole volume, computed when asked (no mask is kept).

    ``CtPhantom((512, 512, 450), seed=3)`` describes a body and a scan of it; each
    mask is rasterized only inside the organ's bounding box, in slabs, so a
    512 × 512 × 900 case never holds more than one volume. ``crop`` gives an
    organ without the volume around it. ``spacing`` defaults to a CT's (a
    360–460 mm field of view over the first two axes, 1–1.5 mm slices); give
    one for reduced shapes, e.g. (3.2, 3.2, 6.0) at 128 × 128 × 96. ``start``
    is the lowest slice in mm above the femoral heads (default: -150 to 100 by seed).
    """

    def __init__(
        self,
        shape: tuple[int, int, int] = (512, 512, 450),
        seed: int | Sequence[int] = 0,
        spacing: tuple[float, float, float] | None = None,
        start: float | None = None,
    ) -> None:
        rng = np.random.default_rng(seed)
        self.plan = body_plan(rng)
        field, slice_spacing = rng.uniform(*FIELD_OF_VIEW), float(rng.choice(SLICE_SPACINGS))
        if spacing is None:
            spacing = (field / shape[0], field / shape[0], slice_spacing)
        centre = (rng.normal(0, 10), rng.normal(-15, 10))  # where the body lies in the image, in mm
        lowest = rng.uniform(*SCAN_START)
        x, y, z = (s * np.arange(n) for s, n in zip(spacing, shape))
        z = z + (lowest if start is None else start)
        self.axes: Axes = (x - x[-1] / 2 + centre[0], y - y[-1] / 2 + centre[1], z)
        origin = (float(self.axes[0][0]), float(self.axes[1][0]), float(self.axes[2][0]))
        self.space = Space(shape=shape, spacing=spacing, origin=origin)
        self.bounds: dict[str, Bounds] = {name: solid.bounds for name, solid in self.plan.items()}
        self.blockers = {name: self._claimed_before(name) for name in self.plan}

    def _claimed_before(self, name: str) -> list[str]:
        """The solids earlier in the plan whose voxels ``name`` gives up (all it meets but those it overlaps)."""
        earlier = list(self.plan)[: list(self.plan).index(name)]
        lo, hi = self.bounds[name]
        return [other for other in earlier if frozenset((name, other)) not in OVERLAPS
                and np.all(self.bounds[other][0] <= hi) and np.all(lo <= self.bounds[other][1])]

    def crop(self, name: str) -> tuple[Box, np.ndarray]:
        """The organ's bounding box (slices of the volume; empty if outside the scan) and its mask there."""
        box = window(self.bounds[name], self.axes) or (slice(0, 0),) * 3
        axes = within(box, self.axes)
        mask = np.zeros(tuple(len(a) for a in axes), bool)
        blockers = [self.plan[other] for other in self.blockers[name]]
        for start in range(0, len(axes[2]), SLAB):
            slab = (axes[0], axes[1], axes[2][start : start + SLAB])
            part = mask[:, :, start : start + SLAB]
            paint(part, self.plan[name], slab)
            held = occupied_box(part)
            if held is not None:  # solids claimed earlier are carved out only where this one lies
                for blocker in blockers:
                    paint(part[held], blocker, within(held, slab), erase=True)
        return box, mask

    def __getitem__(self, name: str) -> np.ndarray:
        box, mask = self.crop(name)
        volume = np.zeros(self.space.shape, bool, order="F")  # NIfTI's order: nibabel writes it without transposing
        volume[box] = mask
        return volume

    def __contains__(self, name: object) -> bool:  # Mapping's default would compute the mask
        return name in self.plan

    def __iter__(self) -> Iterator[str]:
        return iter(TOTAL_CLASSES)

    def __len__(self) -> int:
        return len(TOTAL_CLASSES)


def make_ct_phantom(
    shape: tuple[int, int, int] = (128, 128, 96),
    seed: int | Sequence[int] = 0,
    spacing: tuple[float, float, float] | None = (3.2, 3.2, 6.0),
    start: float | None = None,
) -> tuple[dict[str, np.ndarray], Space]:
    """Every mask of a :class:`CtPhantom` in memory, with its Space: for reduced grids (117 volumes at once).

    The default grid spans 410 × 410 × 576 mm at 3.2 × 3.2 × 6 mm voxels.
    """
    phantom = CtPhantom(shape, seed, spacing, start)
    return dict(phantom), phantom.space
