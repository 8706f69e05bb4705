"""The fixed-size header and the header extensions of an untrusted single-file NIfTI.

nibabel reads extensions with the sizes the file declares (a negative one reads the
whole stream), so neither is left to it: :func:`read_header` reads the header block
itself, :func:`read_extensions` the bytes between header and voxels, bounded by
``MAX_EXTENSION_BYTES``, and whatever the readers raise on a damaged file becomes a
:class:`NiftiError` naming it (:func:`input_errors`).
"""

from __future__ import annotations

import gzip
import json
import math
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from nibabel.nifti1 import Nifti1Header
from nibabel.nifti2 import Nifti2Header
from nibabel.spatialimages import HeaderDataError
from spacetransformer.core.exceptions import SpaceTransformerError

from medmask_store.errors import MaskStoreError, NiftiError
from medmask_store.limits import MAX_EXTENSION_BYTES

NIFTI_SUFFIXES = (".nii.gz", ".nii")
GZIP_MAGIC = b"\x1f\x8b"
HEADER_CLASSES: tuple[type[Nifti1Header], ...] = (Nifti1Header, Nifti2Header)
#: What nibabel, gzip, zlib, struct, numpy, json and spacetransformer raise on a damaged or
#: hostile input file, most specific first, and what it means for the user.
READ_FAILURES: tuple[tuple[type[BaseException], str], ...] = (
    (EOFError, "truncated"),
    (gzip.BadGzipFile, "damaged gzip data"),
    (zlib.error, "corrupt compressed data"),
    (MemoryError, "not enough memory to read it"),
    (HeaderDataError, "invalid NIfTI header"),
    (SpaceTransformerError, "its affine does not describe a voxel grid"),
    (UnicodeDecodeError, "not UTF-8 text"),
    (json.JSONDecodeError, "not valid JSON"),
    (RecursionError, "nested too deeply"),
    (OSError, "cannot be read"),
    (ValueError, "cannot be read"),
    (ArithmeticError, "cannot be read"),
    (struct.error, "cannot be read"),
)


@contextmanager
def input_errors(path: Path) -> Iterator[None]:
    """Turn what the readers raise on a damaged ``path`` into a one-line NiftiError naming it."""
    try:
        yield
    except MaskStoreError:
        raise
    except tuple(kind for kind, _ in READ_FAILURES) as exc:
        reason = next(reason for kind, reason in READ_FAILURES if isinstance(exc, kind))
        detail = " ".join(str(exc).split()) or type(exc).__name__
        raise NiftiError(f"{path}: {reason}: {detail}") from exc


@contextmanager
def nifti_stream(path: Path) -> Iterator[BinaryIO]:
    """The decompressed bytes of ``path``; a ``.gz`` name means gzip, as for nibabel, which picks the
    decompressor by name, so a name that disagrees with the content is refused."""
    with open(path, "rb") as raw:
        magic = raw.read(len(GZIP_MAGIC))
        if not magic:
            raise NiftiError(f"{path}: empty file")
        compressed = path.name.endswith(".gz")
        if compressed != (magic == GZIP_MAGIC):
            raise NiftiError(
                f"{path}: {'not ' if compressed else ''}gzip-compressed although named {path.suffix}; "
                "name a compressed NIfTI .nii.gz and an uncompressed one .nii"
            )
        raw.seek(0)
        yield gzip.GzipFile(fileobj=raw) if compressed else raw  # type: ignore[misc]


def read_header(path: Path) -> Nifti1Header:
    """The fixed-size header of a single-file NIfTI-1 or NIfTI-2, checked as ``nibabel.load`` does."""
    with nifti_stream(path) as stream:
        block = stream.read(max(kind.sizeof_hdr for kind in HEADER_CLASSES))
    for header_class in HEADER_CLASSES:
        if header_class.may_contain_header(block):
            return header_class(block[: header_class.sizeof_hdr])
    if len(block) < Nifti1Header.sizeof_hdr:
        raise NiftiError(f"{path}: truncated or not a NIfTI file: {len(block)} bytes, fewer than a NIfTI header holds")
    raise NiftiError(f"{path}: not a NIfTI file: no NIfTI-1 or NIfTI-2 header at its start")


def read_extensions(path: Path) -> Iterator[tuple[int, bytes]]:
    """The header extensions of a single-file NIfTI as ``(code, content)``, content without its NUL padding.

    They lie between the header's 4-byte extender (extensions follow when its first
    byte is not 0) and the voxels at ``vox_offset``; each is its size (a multiple of
    16, at least 16, counting its 8-byte head), its code and its content, in the
    header's byte order. At most ``MAX_EXTENSION_BYTES`` are read, checked before reading;
    extensions are checked and yielded one at a time, so a million tiny ones cost no list.
    """
    with input_errors(path):
        header = read_header(path)
        start = header.single_vox_offset  # header + extender
        vox_offset = float(header["vox_offset"])
        if not math.isfinite(vox_offset) or vox_offset < start:
            raise NiftiError(f"{path}: header puts the voxels at byte {vox_offset:g}, not after the {start}-byte header")
        end = int(vox_offset)
        if end - start > MAX_EXTENSION_BYTES:
            raise NiftiError(
                f"{path}: header declares {end - start:,} bytes of header extensions before its voxels, above the "
                f"limit of {MAX_EXTENSION_BYTES:,} (medmask_store.limits.MAX_EXTENSION_BYTES); pass its label table as a file"
            )
        with nifti_stream(path) as stream:
            block = stream.read(end)
    if len(block) < start or block[start - 4] == 0:
        return
    if len(block) < end:
        raise NiftiError(f"{path}: truncated: its voxels should start at byte {end:,}, the file holds {len(block):,} bytes")
    head = struct.Struct(header.endianness + "ii")  # the extension's size (its 8-byte head included) and code
    position, number = start, 1
    while end - position >= 16:  # fewer bytes left are padding
        size, code = head.unpack_from(block, position)
        where = f"{path}: header extension {number} (byte {position:,})"
        if size < 16 or size % 16:
            raise NiftiError(f"{where} declares {size} bytes; NIfTI extension sizes are multiples of 16, at least 16")
        if position + size > end:
            raise NiftiError(f"{where} declares {size:,} bytes, past the start of the voxels at byte {end:,}")
        yield code, block[position + head.size : position + size].rstrip(b"\0")
        position, number = position + size, number + 1
