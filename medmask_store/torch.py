"""PyTorch datasets over :class:`~medmask_store.sampling.PatchSampler` (optional extra ``torch``).

Items are MONAI-style dicts: ``label`` (a ``(1, x, y, z)`` int16 tensor, or the
``(organs, x, y, z)`` bool channels), ``case_id``, ``box`` (``(3, 2)`` start/stop
voxels in the case), ``affine`` (the patch's 4×4 NIfTI affine), ``organ`` (the
organ a foreground patch is centred on, ``""`` for a uniform one) and, with
``images``, ``image``: the same box of the case's image, so both align.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from medmask_store.concurrency import use_threads
from medmask_store.model.geometry import nifti_affine
from medmask_store.sampling import Patch, PatchSampler

try:
    import torch
    from torch.utils.data import Dataset, IterableDataset, get_worker_info
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError("medmask_store.torch needs PyTorch: pip install 'medmask_store[torch]'") from exc


class PatchDataset(Dataset[dict[str, Any]]):
    """``length`` patches per epoch; item ``i`` is the same patch in any worker (seeded by ``seed`` and ``i``).

    ``images``: case id -> an array over the case's voxel grid that slices
    (NumPy, zarr, tensorstore, a nibabel ``dataobj``), cut with each patch's box
    and padded with ``image_fill``.
    """

    def __init__(
        self, sampler: PatchSampler, length: int, *, seed: int = 0,
        images: Mapping[str, Any] | None = None, image_fill: float = 0,
    ) -> None:  # fmt: skip
        if length < 1:
            raise ValueError(f"length must be at least 1, got {length}")
        self.sampler, self.length, self.seed = sampler, length, seed
        self.images, self.image_fill = images, image_fill

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"patch {index} of a dataset of {self.length}")
        _in_worker()
        self.sampler.reseed(np.random.SeedSequence([self.seed, index]).generate_state(1)[0])
        return item(self.sampler.sample(), self.images, self.image_fill)


class PatchStream(IterableDataset[dict[str, Any]]):
    """Endless patches; each DataLoader worker draws its own stream, seeded from PyTorch's worker seed."""

    def __init__(self, sampler: PatchSampler, *, images: Mapping[str, Any] | None = None, image_fill: float = 0) -> None:
        self.sampler, self.images, self.image_fill = sampler, images, image_fill

    def __iter__(self) -> Iterator[dict[str, Any]]:
        worker = _in_worker()
        if worker is not None:
            self.sampler.reseed(worker.seed)
        while True:
            yield item(self.sampler.sample(), self.images, self.image_fill)


def _in_worker() -> Any:
    """PyTorch's worker info in a DataLoader worker process (None outside one), where reads then take one
    thread: the worker processes already fill the cores."""
    worker = get_worker_info()
    if worker is not None:
        use_threads(1)
    return worker


def item(patch: Patch, images: Mapping[str, Any] | None = None, image_fill: float = 0) -> dict[str, Any]:
    """A patch as a MONAI-style dict of tensors (see the module docstring)."""
    label = patch.data if patch.data.ndim == 4 else patch.data[None]
    out: dict[str, Any] = {
        "label": torch.from_numpy(np.ascontiguousarray(label)),
        "case_id": patch.case_id,
        "box": torch.from_numpy(patch.bounds),
        "affine": torch.from_numpy(nifti_affine(patch.space)),
        "organ": patch.organ or "",
    }
    if images is not None:
        out["image"] = torch.from_numpy(patch.cut(images[patch.case_id], image_fill)[None])
    return out
