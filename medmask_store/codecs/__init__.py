"""Chunk codecs: PackBits+Zstd for binary layers and Crackle+Zstd for compact label volumes,
each as a numcodecs and a Zarr v3 codec."""

from medmask_store.codecs.crackle_zstd import CrackleZstd
from medmask_store.codecs.packbits_zstd import PackBitsZstd
from medmask_store.codecs.zarr3 import CrackleZstdCodec, PackBitsZstdCodec

__all__ = ["CrackleZstd", "CrackleZstdCodec", "PackBitsZstd", "PackBitsZstdCodec"]
