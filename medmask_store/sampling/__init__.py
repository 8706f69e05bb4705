"""Training patches straight from an archive (no torch needed): :class:`PatchSampler` and :class:`Patch`."""

from medmask_store.sampling.sampler import PAD_LABEL, Patch, PatchSampler

__all__ = ["PAD_LABEL", "Patch", "PatchSampler"]
