"""Zarr v3 array->bytes codecs ``packbits_zstd`` and ``crackle_zstd``, wrapping our numcodecs codecs.

Registered under the entry-point group ``zarr.codecs``, so any zarr-python 3
process with medmask_store installed decodes binary layers and compact label
volumes without importing it.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from numcodecs.abc import Codec
from zarr.abc.codec import ArrayBytesCodec
from zarr.core.common import JSON, parse_named_configuration
from zarr.registry import register_codec

from medmask_store.codecs.crackle_zstd import CrackleZstd, decode_chunk
from medmask_store.codecs.packbits_zstd import PackBitsZstd, decode_frame

if TYPE_CHECKING:
    from typing import Self

    from zarr.core.array_spec import ArraySpec
    from zarr.core.buffer import Buffer, NDBuffer


@dataclass(frozen=True)
class _ChunkCodec(ArrayBytesCodec):
    """A numcodecs chunk codec with a Zstd ``level`` as a Zarr v3 array->bytes codec."""

    is_fixed_size = False
    codec_name: ClassVar[str]
    numcodec: ClassVar[type[PackBitsZstd] | type[CrackleZstd]]

    level: int = 19

    def __init__(self, *, level: int = 19) -> None:
        object.__setattr__(self, "level", self.numcodec(level).level)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        _, configuration = parse_named_configuration(data, cls.codec_name, require_configuration=False)
        return cls(**(configuration or {}))  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        return {"name": self.codec_name, "configuration": {"level": self.level}}

    @cached_property
    def _codec(self) -> Codec:
        return self.numcodec(self.level)

    def _decode_array(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        raise NotImplementedError

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        dtype = np.dtype(chunk_spec.dtype.to_native_dtype())
        decoded = self._decode_array(chunk_bytes.to_bytes(), tuple(chunk_spec.shape), dtype)
        return chunk_spec.prototype.nd_buffer.from_numpy_array(decoded)

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return chunk_spec.prototype.buffer.from_bytes(self._codec.encode(chunk_array.as_numpy_array()))

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, chunk_spec: ArraySpec) -> int:
        raise NotImplementedError


@dataclass(frozen=True, init=False)
class PackBitsZstdCodec(_ChunkCodec):
    """Serialize boolean chunks as PackBits+Zstd frames (see :mod:`.packbits_zstd`)."""

    codec_name = "packbits_zstd"
    numcodec = PackBitsZstd

    def validate(self, *, dtype: Any, **_kwargs: Any) -> None:
        if dtype.to_native_dtype() != np.bool_:
            raise TypeError(f"packbits_zstd needs a bool array, got {dtype}")

    def _decode_array(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return decode_frame(data, math.prod(shape)).reshape(shape)


@dataclass(frozen=True, init=False)
class CrackleZstdCodec(_ChunkCodec):
    """Serialize 3-D label chunks as Crackle+Zstd (see :mod:`.crackle_zstd`)."""

    codec_name = "crackle_zstd"
    numcodec = CrackleZstd

    def validate(self, *, shape: Any, dtype: Any, **_kwargs: Any) -> None:
        if len(shape) != 3 or np.dtype(dtype.to_native_dtype()).kind != "u":
            raise TypeError(f"crackle_zstd needs a 3-D unsigned-integer array, got {len(shape)}-D {dtype}")

    def _decode_array(self, data: bytes, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        return decode_chunk(data, shape, dtype)


register_codec("packbits_zstd", PackBitsZstdCodec)
register_codec("crackle_zstd", CrackleZstdCodec)
