"""Patches for training loops: uniform and foreground-oversampled boxes, padded at the border like nnU-Net v2.

A patch is ``patch_size`` voxels of one case. Its lower corner is drawn as
nnU-Net v2's ``get_bbox`` draws it: uniformly from ``(-excess) // 2`` to
``shape + excess // 2 + excess % 2 - patch`` per axis (``excess``: how much the
patch is larger than the volume, else 0; so a larger patch is centred), or,
for a foreground patch, centred on a random voxel of a randomly chosen organ
present in the case, raised to that lower bound if it falls below it.
Voxels outside the volume read :data:`PAD_LABEL` (-1, nnU-Net's segmentation
padding) in label patches and False in organ channels.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from medmask_store.errors import CorruptChunk, OrganNotFound

if TYPE_CHECKING:
    from spacetransformer import Space

    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.case import Case

PAD_LABEL = -1
LABEL_PATCH_DTYPE = np.dtype(np.int16)  # holds every label value (≤ 32767 in practice) and PAD_LABEL


@dataclass(frozen=True)
class Patch:
    """One sampled patch: where it lies in its case, its voxels and its geometry."""

    case_id: str
    start: tuple[int, int, int]  # lower corner in the case's voxel grid; negative or past the end where padded
    data: np.ndarray  # int16 labels (x, y, z), or bool organ channels (organ, x, y, z) when organs are chosen
    case_space: Space  # the geometry of the whole case
    organ: str | None  # the organ a foreground patch is centred on; None for a uniform one

    @property
    def space(self) -> Space:
        """The patch's own geometry (its affine), padding included; made on request (it costs ~0.1 ms)."""
        return self.case_space.apply_bbox(self.bounds)

    @property
    def box(self) -> tuple[slice, slice, slice]:
        """The patch as voxel slices of its case (they may reach outside the volume)."""
        return _box(self.start, self.data.shape[-3:])

    @property
    def bounds(self) -> np.ndarray:
        """The box as (start, stop) voxel rows, shape (3, 2)."""
        return _bounds(self.box)

    def cut(self, volume: Any, fill: float = 0) -> np.ndarray:
        """The same box of another array over the case's grid (an image: NumPy, zarr, nibabel proxy...), ``fill`` outside."""
        inside, placed = _window(self.start, self.data.shape[-3:], volume.shape)
        region = np.asarray(volume[inside])
        out = np.full(self.data.shape[-3:], fill, dtype=region.dtype)
        out[placed] = region
        return out


class PatchSampler:
    """Random patches of an archive's cases, reproducible from ``seed``.

    ``cases``: case ids, or a query expression (``archive.query``); all cases by
    default. ``foreground_fraction`` of the patches are centred on an organ
    (``class_probabilities``: organ name -> weight, among the organs present in
    the drawn case; equal weights by default). ``organs``: return one boolean
    channel per organ, overlaps exact, instead of the label patch. A foreground
    centre is drawn uniformly among the organ's voxels from the case's stored
    voxel counts per chunk, decoding one chunk of the organ, never the whole
    volume. Up to ``open_cases`` cases stay open per process.
    """

    def __init__(
        self,
        archive: MaskArchive,
        patch_size: int | Sequence[int],
        *,
        cases: Sequence[str] | str | None = None,
        foreground_fraction: float = 0.33,
        class_probabilities: Mapping[str, float] | None = None,
        organs: Sequence[str] | None = None,
        seed: int | None = 0,
        open_cases: int = 16,
    ) -> None:
        size = (patch_size,) * 3 if isinstance(patch_size, int) else tuple(int(n) for n in patch_size)
        if len(size) != 3 or min(size) < 1:
            raise ValueError(f"patch_size must be one positive int or three, got {patch_size!r}")
        if not 0.0 <= foreground_fraction <= 1.0:
            raise ValueError(f"foreground_fraction must be in [0, 1], got {foreground_fraction}")
        if class_probabilities is not None and any(not w >= 0 for w in class_probabilities.values()):
            raise ValueError("class_probabilities must be non-negative weights")
        if open_cases < 1:
            raise ValueError(f"open_cases must be at least 1, got {open_cases}")
        self.archive = archive
        self.patch_size: tuple[int, int, int] = size  # type: ignore[assignment]
        self.case_ids = list(archive.query(cases) if isinstance(cases, str) else archive.case_ids() if cases is None else cases)
        if not self.case_ids:
            raise ValueError(f"{archive.path}: no cases to sample from" + (f" (query {cases!r})" if isinstance(cases, str) else ""))
        self.foreground_fraction = foreground_fraction
        self.class_probabilities = dict(class_probabilities) if class_probabilities is not None else None
        self.organs = list(organs) if organs is not None else None
        self.open_cases = open_cases
        self.rng = np.random.default_rng(seed)
        self._open: OrderedDict[str, Case] = OrderedDict()
        # (case, organ) -> the chunks holding the organ (n, 3) and its voxels in them, cumulated; for open cases
        self._locations: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
        self._organ_draws: dict[str, tuple[list[str], np.ndarray]] = {}  # case -> _organ_weights, for open cases

    def __getstate__(self) -> dict[str, Any]:
        """Pickles for worker processes without its open cases (the archive pickles by path)."""
        return {**self.__dict__, "_open": OrderedDict(), "_locations": {}, "_organ_draws": {}}

    def reseed(self, seed: int) -> None:
        """Start a new random stream, e.g. one per DataLoader worker (``worker_info.seed``)."""
        self.rng = np.random.default_rng(seed)

    def __iter__(self) -> Iterator[Patch]:
        while True:
            yield self.sample()

    def sample(self, case_id: str | None = None) -> Patch:
        """One patch of ``case_id`` (a random case by default)."""
        case = self.case(case_id if case_id is not None else self.case_ids[int(self.rng.integers(len(self.case_ids)))])
        organ = self._foreground_organ(case) if self.rng.random() < self.foreground_fraction else None
        start = self._start(case, organ)
        return Patch(case.case_id, start, self.read(case, start), case.space, organ)

    def case(self, case_id: str) -> Case:
        """An open case, from this process's cache of the ``open_cases`` most recently used."""
        if case_id in self._open:
            self._open.move_to_end(case_id)
            return self._open[case_id]
        case = self._open[case_id] = self.archive[case_id]
        if len(self._open) > self.open_cases:
            closed, _ = self._open.popitem(last=False)
            self._locations = {key: voxels for key, voxels in self._locations.items() if key[0] != closed}
            self._organ_draws.pop(closed, None)
        return case

    def read(self, case: Case, start: Sequence[int]) -> np.ndarray:
        """The patch at ``start`` (padded outside the volume): labels, or the chosen organs' channels."""
        inside, placed = _window(start, self.patch_size, case.info.shape)
        if self.organs is None:
            padded = any(s.stop - s.start < n for s, n in zip(placed, self.patch_size))
            patch = np.full(self.patch_size, PAD_LABEL, LABEL_PATCH_DTYPE) if padded else np.empty(self.patch_size, LABEL_PATCH_DTYPE)
            case.read_region(inside, out=patch[placed])  # decoded straight into the patch
            return patch
        channels = np.zeros((len(self.organs), *self.patch_size), dtype=bool)
        for channel, name in zip(channels, self.organs):
            channel[placed] = case.read_organ(name, inside)
        return channels

    # -- drawing ---------------------------------------------------------------
    def _foreground_organ(self, case: Case) -> str | None:
        if case.case_id not in self._organ_draws:
            self._organ_draws[case.case_id] = self._organ_weights(case)
        present, cumulative = self._organ_draws[case.case_id]
        if not present:
            return None  # nnU-Net falls back to a uniform patch when no wanted class is present
        return present[int(cumulative.searchsorted(self.rng.random(), side="right"))]  # as Generator.choice(p=...)

    def _organ_weights(self, case: Case) -> tuple[list[str], np.ndarray]:
        """The organs a foreground patch of ``case`` may be centred on, with their cumulative probabilities."""
        present = [name for name, stats in case.info.stats.items() if stats.voxels and (self.organs is None or name in self.organs)]
        if self.class_probabilities is not None:
            unknown = sorted(set(self.class_probabilities) - set(case.mapping))
            if unknown:
                raise OrganNotFound(f"{case.where}: class_probabilities names organs the case does not have: {unknown}")
            present = [name for name in present if self.class_probabilities.get(name, 0.0) > 0]
        cumulative = np.cumsum([self.class_probabilities[n] if self.class_probabilities else 1.0 for n in present])
        return present, cumulative / cumulative[-1] if present else cumulative

    def _start(self, case: Case, organ: str | None) -> tuple[int, int, int]:
        shape = list(case.info.shape)
        excess = [max(p - n, 0) for p, n in zip(self.patch_size, shape)]
        low = [(-e) // 2 for e in excess]
        high = [n + e // 2 + e % 2 - p for n, e, p in zip(shape, excess, self.patch_size)]
        if organ is None:
            return tuple(int(self.rng.integers(lo, hi + 1)) for lo, hi in zip(low, high))  # type: ignore[return-value]
        voxel = self._organ_voxel(case, organ)
        return tuple(int(max(v - p // 2, lo)) for v, p, lo in zip(voxel, self.patch_size, low))  # type: ignore[return-value]

    def _organ_voxel(self, case: Case, organ: str) -> tuple[int, int, int]:
        """A voxel of ``organ`` drawn uniformly: a chunk weighted by the organ's voxels in it (the case's stored
        counts), then one of those voxels, decoding that chunk only."""
        key = (case.case_id, organ)
        if key not in self._locations:
            counts = case.organ_chunk_voxels(organ)
            held = np.flatnonzero(counts)
            self._locations[key] = (np.stack(np.unravel_index(held, counts.shape), axis=1), np.cumsum(counts.ravel()[held]))
        chunks, cumulative = self._locations[key]
        drawn = int(self.rng.integers(cumulative[-1]))
        index = int(np.searchsorted(cumulative, drawn, side="right"))
        before = int(cumulative[index - 1]) if index else 0
        edge = case.stored_labels.chunks
        region = tuple(slice(c * n, min((c + 1) * n, size)) for c, n, size in zip(chunks[index], edge, case.info.shape))
        mask = case.organ(organ)[region]
        voxels = np.flatnonzero(mask)
        if voxels.size != cumulative[index] - before:
            raise CorruptChunk(
                f"{case.where}: organ {organ!r} has {voxels.size} voxels in chunk {tuple(chunks[index])}, "
                f"its stored counts say {cumulative[index] - before}"
            )
        local = np.unravel_index(voxels[drawn - before], mask.shape)
        return tuple(int(r.start + v) for r, v in zip(region, local))  # type: ignore[return-value]


def _box(start: Sequence[int], size: Sequence[int]) -> tuple[slice, slice, slice]:
    return slice(start[0], start[0] + size[0]), slice(start[1], start[1] + size[1]), slice(start[2], start[2] + size[2])


def _bounds(box: Sequence[slice]) -> np.ndarray:
    """A box as (start, stop) rows, as ``Space.apply_bbox`` takes it."""
    return np.array([[s.start, s.stop] for s in box])


def _window(start: Sequence[int], size: Sequence[int], shape: Sequence[int]) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """The part of a box inside a volume of ``shape``, as slices of the volume and of the box."""
    inside = tuple(slice(max(s, 0), min(s + p, int(n))) for s, p, n in zip(start, size, shape))
    return inside, tuple(slice(i.start - s, i.stop - s) for i, s in zip(inside, start))
