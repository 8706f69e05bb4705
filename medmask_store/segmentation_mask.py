"""``SegmentationMask`` and ``LabelMapping``: the ``medmask`` 0.1.3 API on top of a one-case archive.

Code written for ``medmask`` runs unchanged after switching the import::

    from medmask_store import SegmentationMask

    mask = SegmentationMask(labels, {"liver": 1, "spleen": 2}, space=space)
    mask.save("case.msk")                       # one-case archive in one small file
    mask = SegmentationMask.load("case.msk")
    liver = mask.get_binary_mask_by_names("liver")

Differences from medmask, all deliberate:

- **Files.** ``save(path)`` writes a medmask_store archive holding one case
  (id :data:`CASE_ID`): the format picked by the suffix for ``.zarr``,
  ``.zarr.zip``, ``.h5`` and ``.hdf5``, the packed single-file backend (.msk format) for any
  other suffix. The mask's dtype is kept in the case's metadata, so ``load``
  returns the same dtype. Any archive case without overlapping organs loads with
  :meth:`SegmentationMask.from_case`.
- **Unnamed labels.** Labels present in the array but absent from the mapping are
  named ``idx_<label>`` when the mask is built (medmask's documented intent; its
  ``_sync_labels_with_array`` only looks at the mapping's own labels, so it never
  names anything). Labels of the mapping absent from the array are kept: they
  are empty organs.
- **Validation.** Errors are raised when the mask is built, not when it is saved:
  :class:`~medmask_store.errors.InvalidCase` (a ``ValueError``) for bad arrays,
  spaces, names and labels; :class:`~medmask_store.errors.OrganNotFound` (a
  ``KeyError``) for an unknown name or label. Labels are integers in
  ``1..65535`` (0 is the background); dtypes are bool, uint8, uint16, and uint32
  whose values fit in 0..65535. The array is not reordered: its shape must equal
  ``space.shape`` in whatever axis order the caller uses.
- **No aliasing.** The mask keeps its own copy of the mapping, and ``add_label``
  paints into a new array, so earlier ``.data`` views and the caller's arrays
  never change.
"""

from __future__ import annotations

import difflib
import json
import os
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path

import numpy as np
from spacetransformer import Space

from medmask_store.errors import CorruptChunk, InvalidArchive, InvalidCase, OrganNotFound
from medmask_store.model.case_data import CaseData
from medmask_store.model.palette import Color
from medmask_store.model.validation import MAX_LABEL_VALUE, validate_organ_name
from medmask_store.model.voxels import occupied_box
from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.case import Case
from medmask_store.storage.chunked import iter_chunks
from medmask_store.storage.layout import StorageSettings

__all__ = ["CASE_ID", "LabelMapping", "SegmentationMask"]

#: Id of the one case that :meth:`SegmentationMask.save` writes.
CASE_ID = "mask"
#: Key of the case metadata entry holding the mask's dtype.
DTYPE_KEY = "array_dtype"
#: Suffixes saved in the archive format they name; any other suffix gets the packed single-file backend (.msk format).
ARCHIVE_SUFFIXES = (".zarr", ".zarr.zip", ".h5", ".hdf5")

_DTYPES = {1: np.dtype(np.bool_), 8: np.dtype(np.uint8), 16: np.dtype(np.uint16), 32: np.dtype(np.uint32)}
_BIT_DEPTHS = {dtype: bits for bits, dtype in _DTYPES.items()}


def _label(value: object, what: str) -> int:
    """``value`` as a Python int label in 1..65535, else :class:`InvalidCase`."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise InvalidCase(f"label of {what} must be an integer, got {value!r}")
    label = int(value)
    if not 1 <= label <= MAX_LABEL_VALUE:
        raise InvalidCase(f"label {label} of {what} is outside 1..{MAX_LABEL_VALUE} (0 is the background)")
    return label


def _not_found(name: object, known: Iterable[str]) -> OrganNotFound:
    close = difflib.get_close_matches(str(name), list(known), n=3)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return OrganNotFound(f"no organ named {name!r} in the label mapping{hint}")


class LabelMapping(Mapping[str, int]):
    """Bidirectional organ name <-> label mapping, compatible with ``medmask.LabelMapping``.

    Names are unique, labels are unique integers in 1..65535. It is a read-only
    ``Mapping`` (``dict(m)``, ``m.keys()``, ``m.get(name)``) that can also be
    extended with ``m[name] = label``; ``m.liver`` reads a label like ``m["liver"]``.
    """

    def __init__(self, name_to_label: Mapping[str, int] | None = None) -> None:
        self._name_to_label: dict[str, int] = {}
        self._label_to_name: dict[int, str] = {}
        if name_to_label is None:
            return
        if not isinstance(name_to_label, Mapping):
            raise InvalidCase(f"a label mapping must be a dict of name -> label, got {type(name_to_label).__name__}")
        for name, label in name_to_label.items():
            self[name] = label

    # -- medmask API ---------------------------------------------------------
    def __setitem__(self, name: str, label: int) -> None:
        """Name ``label``; re-assigning an existing name moves it to the new label."""
        validate_organ_name(name)
        label = _label(label, f"organ {name!r}")
        owner = self._label_to_name.get(label)
        if owner is not None and owner != name:
            raise InvalidCase(f"label {label} already belongs to organ {owner!r}; cannot also name it {name!r}")
        if name in self._name_to_label:
            del self._label_to_name[self._name_to_label[name]]
        self._name_to_label[name] = label
        self._label_to_name[label] = name

    def __getitem__(self, name: str) -> int:
        try:
            return self._name_to_label[name]
        except (KeyError, TypeError):
            raise _not_found(name, self._name_to_label) from None

    def __call__(self, name: str) -> int:
        return self[name]

    def __getattr__(self, name: str) -> int:
        # Only called when normal lookup fails; private names (and copy/pickle probes) stay AttributeErrors.
        table = self.__dict__.get("_name_to_label")
        if name.startswith("_") or table is None or name not in table:
            raise AttributeError(f"{type(self).__name__!s} has no attribute or organ {name!r}")
        return table[name]

    def inverse(self, label: int) -> str:
        """The organ name of ``label``."""
        try:
            return self._label_to_name[label]
        except (KeyError, TypeError):
            raise OrganNotFound(f"no organ has label {label!r} in the label mapping") from None

    def has_label(self, label: int) -> bool:
        try:
            return label in self._label_to_name
        except TypeError:  # unhashable
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self._name_to_label)

    def __len__(self) -> int:
        return len(self._name_to_label)

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._name_to_label
        except TypeError:
            return False

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Mapping):
            return self._name_to_label == dict(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable

    def to_dict(self) -> dict[str, int]:
        """A copy as a plain dict, name -> label."""
        return dict(self._name_to_label)

    def to_json(self) -> str:
        return json.dumps(self._name_to_label)

    @classmethod
    def from_json(cls, json_str: str) -> LabelMapping:
        try:
            content = json.loads(json_str)
        except (TypeError, ValueError) as exc:
            raise InvalidCase(f"label mapping JSON does not parse: {exc}") from exc
        if not isinstance(content, dict):
            raise InvalidCase(f"label mapping JSON must be an object of name -> label, got {json_str!r:.80}")
        return cls(content)

    def __repr__(self) -> str:
        return f"LabelMapping({self._name_to_label!r})"

    def __str__(self) -> str:  # as medmask prints it
        return str(self._name_to_label)


class SegmentationMask:
    """A 3-D label array, its :class:`~spacetransformer.Space` and a :class:`LabelMapping` (medmask API).

    Parameters
    ----------
    mask_array : ndarray
        3-D, dtype bool, uint8, uint16 or uint32 (values up to 65535). Not copied.
    mapping : dict or LabelMapping
        Organ name -> label. Labels in the array but not in the mapping are named ``idx_<label>``.
    space : Space, optional
        Geometry; its shape must equal ``mask_array.shape``. Default: ``Space(shape=mask_array.shape)``.
    """

    def __init__(
        self,
        mask_array: np.ndarray,
        mapping: Mapping[str, int] | LabelMapping,
        space: Space | None = None,
    ) -> None:
        array = np.asarray(mask_array)
        if array.dtype not in _BIT_DEPTHS:
            raise InvalidCase(
                f"mask array has dtype {array.dtype}; use bool, uint8, uint16 or uint32 (e.g. .astype(np.uint8))"
            )
        if array.ndim != 3:
            raise InvalidCase(f"mask array must be 3-D, got shape {array.shape}")
        if space is None:
            space = Space(shape=tuple(int(s) for s in array.shape))  # type: ignore[arg-type]
        elif not isinstance(space, Space):
            raise InvalidCase(f"space must be a spacetransformer.Space, got {type(space).__name__}")
        elif tuple(array.shape) != tuple(space.shape):
            raise InvalidCase(f"mask array has shape {array.shape}, its Space has shape {tuple(space.shape)}")
        self._array: np.ndarray | None = array
        self._chunks: _DecodedChunks | None = None
        self._space = space
        self._mapping = LabelMapping(mapping)
        self._colors: dict[str, Color] = {}  # of a loaded case's organs, kept by name through save
        for label in _present_labels(array):
            if not self._mapping.has_label(label):
                name = f"idx_{label}"
                if name in self._mapping:
                    raise InvalidCase(
                        f"label {label} is in the array but not in the mapping, and its default name "
                        f"{name!r} is taken by label {self._mapping[name]}"
                    )
                self._mapping[name] = label

    # -- properties ----------------------------------------------------------
    @property
    def _mask_array(self) -> np.ndarray:
        """The label array; a loaded mask assembles it from its decoded chunks on first use."""
        if self._array is None:
            assert self._chunks is not None
            self._array = self._chunks.assemble()
            self._chunks = None
        return self._array

    @property
    def data(self) -> np.ndarray:
        """The label array as a read-only view (same axis order as given)."""
        view = self._mask_array.view()
        view.flags.writeable = False
        return view

    @property
    def space(self) -> Space:
        return self._space

    @property
    def mapping(self) -> LabelMapping:
        return self._mapping

    @property
    def bit_depth(self) -> int:
        """1 (bool), 8, 16 or 32 bits per voxel."""
        return _BIT_DEPTHS[self._chunks.dtype if self._chunks is not None else self._mask_array.dtype]

    def __repr__(self) -> str:
        return (
            f"SegmentationMask(shape={tuple(self._space.shape)}, dtype={_DTYPES[self.bit_depth]}, "
            f"mapping={self._mapping.to_dict()!r})"
        )

    # -- building ------------------------------------------------------------
    @classmethod
    def lazy_init(
        cls, bit_depth: int, *, space: Space | None = None, shape: tuple[int, ...] | None = None
    ) -> SegmentationMask:
        """An all-background mask of ``bit_depth`` (1, 8, 16 or 32) bits, shaped by ``space`` or ``shape``."""
        if isinstance(bit_depth, bool) or bit_depth not in _DTYPES:
            raise InvalidCase(f"bit_depth must be one of 1, 8, 16, 32, got {bit_depth!r}")
        if space is None and shape is None:
            raise InvalidCase("lazy_init needs a space or a shape")
        if space is not None and shape is not None and tuple(shape) != tuple(space.shape):
            raise InvalidCase(f"shape {tuple(shape)} differs from the Space's shape {tuple(space.shape)}")
        dims = tuple(space.shape) if space is not None else tuple(shape)  # type: ignore[arg-type]
        return cls(np.zeros(dims, dtype=_DTYPES[bit_depth]), {}, space=space)

    def add_label(self, mask: np.ndarray, label: int, name: str) -> None:
        """Paint ``mask`` (bool, or nonzero voxels) with a new ``label`` named ``name``.

        Voxels already labelled inside ``mask`` take the new label, as in medmask.
        """
        label = _label(label, f"organ {name!r}")
        validate_organ_name(name)
        if self._mapping.has_label(label):
            raise InvalidCase(f"label {label} already exists (organ {self._mapping.inverse(label)!r})")
        if name in self._mapping:
            raise InvalidCase(f"organ {name!r} already exists (label {self._mapping[name]})")
        limit = 1 if self.bit_depth == 1 else min(2**self.bit_depth - 1, MAX_LABEL_VALUE)
        if label > limit:
            raise InvalidCase(
                f"label {label} of organ {name!r} exceeds the {self.bit_depth}-bit mask's limit ({limit})"
            )
        mask = np.asarray(mask)
        if mask.shape != self._mask_array.shape:
            raise InvalidCase(f"mask for organ {name!r} has shape {mask.shape}, expected {self._mask_array.shape}")
        painted = self._mask_array.copy()
        painted[mask if mask.dtype == np.bool_ else mask > 0] = label
        self._mapping[name] = label
        self._array = painted

    # -- queries -------------------------------------------------------------
    def get_binary_mask_by_names(self, names: str | Iterable[str]) -> np.ndarray:
        """Boolean mask of one organ, or of the union of several."""
        if isinstance(names, str):
            return self.get_binary_mask_by_labels(self._mapping[names])
        return self.get_binary_mask_by_labels([self._mapping[n] for n in names])

    def get_binary_mask_by_labels(self, labels: int | Iterable[int]) -> np.ndarray:
        """Boolean mask of the voxels holding ``labels`` (one label or several); unused labels match nothing."""
        if isinstance(labels, (int, np.integer)) and not isinstance(labels, (bool, np.bool_)):
            if self._chunks is not None:  # loaded and not assembled: compare the stored chunks only
                return self._chunks.equal_to(int(labels))
            return self._mask_array == int(labels)
        if isinstance(labels, (str, bytes, bool, np.bool_)) or not isinstance(labels, Iterable):
            raise InvalidCase(f"labels must be an integer or a list of integers, got {labels!r}")
        wanted = list(labels)
        for label in wanted:
            if isinstance(label, (bool, np.bool_)) or not isinstance(label, (int, np.integer)):
                raise InvalidCase(f"labels must be integers, got {label!r} in {wanted!r}")
        return np.isin(self._mask_array, np.asarray(wanted, dtype=np.int64))

    def to_binary(self) -> np.ndarray:
        """Boolean mask of every labelled (nonzero) voxel."""
        return self._mask_array != 0

    # -- persistence ---------------------------------------------------------
    def to_case_data(self) -> CaseData:
        """The mask as an archive case (every organ in the label volume; the dtype in ``meta``)."""
        array = self._mask_array
        labels = array.view(np.uint8) if array.dtype == np.bool_ else array
        meta = {DTYPE_KEY: array.dtype.name}
        case = CaseData.from_labels(labels, self._mapping.to_dict(), space=self._space, meta=meta)
        case.colors.update((name, color) for name, color in self._colors.items() if name in self._mapping)
        return case

    def save(self, path: str | os.PathLike[str], preset: str = "default") -> None:
        """Write a one-case archive (case :data:`CASE_ID`), replacing ``path``.

        ``.zarr``, ``.zarr.zip``, ``.h5`` and ``.hdf5`` give that archive format;
        any other suffix (``.msk``, ``.medmask``, ...) the packed single file.
        ``preset="compact"`` makes files ~15 % smaller and decoding ~5x slower.
        """
        path = Path(path)
        with _open_for_writing(path, StorageSettings.preset(preset)) as archive:
            archive.add_case(CASE_ID, self.to_case_data())

    @classmethod
    def load(cls, path: str | os.PathLike[str], case_id: str | None = None) -> SegmentationMask:
        """Read a mask from an archive: its only case, or ``case_id``."""
        if not Path(path).exists():
            raise InvalidArchive(f"cannot load a mask from {path}: no such file or directory")
        with MaskArchive(path, "r") as archive:
            if case_id is None:
                ids = archive.case_ids()
                if len(ids) != 1:
                    held = f"{len(ids)} cases ({', '.join(map(repr, ids[:20]))}{', ...' if len(ids) > 20 else ''})"
                    raise InvalidArchive(
                        f"{path} holds {held if ids else 'no case'}; "
                        + ("pass case_id=... to choose one" if ids else "nothing to load")
                    )
                case_id = ids[0]
            return cls.from_case(archive[case_id])

    @classmethod
    def from_case(cls, case: Case) -> SegmentationMask:
        """A mask from any archive case whose organs do not overlap (reads the whole label volume)."""
        if case.info.layer_names:
            layered = ", ".join(map(repr, case.info.layer_names))
            raise InvalidCase(
                f"case {case.case_id!r} has overlapping organs ({layered} overlap others); a SegmentationMask "
                "holds one label per voxel and cannot represent them: read each organ with case.read_organ(name)"
            )
        stored = case.meta.get(DTYPE_KEY, case.info.label_dtype.name)
        if stored not in {d.name for d in _BIT_DEPTHS}:
            raise InvalidCase(f"case {case.case_id!r}: unsupported {DTYPE_KEY} {stored!r} in its metadata")
        dtype = np.dtype(stored)
        present = [v for n, v in case.mapping.items() if case.stats[n].voxels]  # from metadata: no scan
        if max(present, default=0) > (1 if dtype == np.bool_ else np.iinfo(dtype).max):
            raise InvalidCase(f"case {case.case_id!r}: its labels do not fit its {DTYPE_KEY} {stored!r}")
        chunks = _DecodedChunks.of(case, dtype)
        expected = sum(s.voxels for s in case.stats.values())
        if chunks.nonzero() != expected:
            raise CorruptChunk(
                f"case {case.case_id!r}: its label chunks hold {chunks.nonzero()} organ voxels, "
                f"its statistics say {expected}: chunks are missing or damaged"
            )
        # every stored label is named in the stored mapping: no need to look for unnamed ones
        mask = cls.__new__(cls)
        mask._array, mask._chunks = None, chunks
        mask._space, mask._mapping, mask._colors = case.space, LabelMapping(case.mapping), case.colors
        return mask


class _DecodedChunks:
    """The non-empty chunks of a loaded label volume: decoded at load, assembled only when needed."""

    def __init__(self, shape: tuple[int, ...], dtype: np.dtype, chunks: list[tuple[tuple[slice, ...], np.ndarray]]):
        self.shape, self.dtype, self.chunks = shape, dtype, chunks  # (region of the volume, its voxels)

    @classmethod
    def of(cls, case: Case, dtype: np.dtype) -> _DecodedChunks:
        labels = case.stored_labels
        decoded = []
        for coords, region in iter_chunks(labels.shape, labels.chunks):
            chunk = labels.read_chunk(coords)
            if chunk is not None:
                decoded.append((region, chunk[tuple(slice(0, r.stop - r.start) for r in region)]))
        return cls(tuple(labels.shape), dtype, decoded)

    def nonzero(self) -> int:
        return sum(int(np.count_nonzero(chunk)) for _, chunk in self.chunks)

    def assemble(self) -> np.ndarray:
        array = np.zeros(self.shape, dtype=self.dtype)
        for region, chunk in self.chunks:
            array[region] = chunk
        return array

    def equal_to(self, label: int) -> np.ndarray:
        mask = np.zeros(self.shape, dtype=bool)
        for region, chunk in self.chunks:
            mask[region] = chunk == label
        return mask


def _present_labels(array: np.ndarray) -> list[int]:
    """The nonzero values of a label array, sorted (one bincount over the occupied box)."""
    if array.dtype == np.bool_:
        return [1] if array.any() else []
    box = occupied_box(array) if array.ndim == 3 else (slice(None),) * array.ndim
    if box is None or array.size == 0:
        return []
    block = array[box]
    top = int(block.max())
    if top > MAX_LABEL_VALUE:
        raise InvalidCase(f"mask array holds label {top}; labels must be at most {MAX_LABEL_VALUE}")
    counts = np.bincount(block.ravel(order="K"), minlength=1)
    return [int(v) for v in np.flatnonzero(counts[1:]) + 1]


def _open_for_writing(path: Path, settings: StorageSettings) -> MaskArchive:
    """A new archive at ``path``: suffix-picked format for archive suffixes, else the packed single file."""
    if path.name.endswith(ARCHIVE_SUFFIXES):
        return MaskArchive(path, "w", settings=settings)
    return MaskArchive(path, "w", settings=settings, backend="msk")
