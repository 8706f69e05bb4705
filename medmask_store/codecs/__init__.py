"""Chunk codecs: PackBits+Zstd for binary layers and Crackle+Zstd for compact label volumes,
each as a numcodecs and a Zarr v3 codec."""

from typing import TYPE_CHECKING

from medmask_store.lazy import lazy_exports

if TYPE_CHECKING:
    from medmask_store.codecs.crackle_zstd import CrackleZstd
    from medmask_store.codecs.packbits_zstd import PackBitsZstd
    from medmask_store.codecs.zarr3 import CrackleZstdCodec, PackBitsZstdCodec

__all__ = ["CrackleZstd", "CrackleZstdCodec", "PackBitsZstd", "PackBitsZstdCodec"]

# Imported on first use: numcodecs and zarr-python find the codecs through entry points, and
# readers of our own chunks (codecs.chunks) need neither.
__getattr__, __dir__ = lazy_exports(__name__, {
    "CrackleZstd": "medmask_store.codecs.crackle_zstd",
    "CrackleZstdCodec": "medmask_store.codecs.zarr3",
    "PackBitsZstd": "medmask_store.codecs.packbits_zstd",
    "PackBitsZstdCodec": "medmask_store.codecs.zarr3",
})
