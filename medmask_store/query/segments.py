"""Index segments: the rows of a set of cases, stored as one compressed blob per column.

A segment holds, for each of its cases, the case id, the store's version token, the label mapping
(as a code into the segment's distinct mappings) and the metadata (one blob per key), and one row
per *non-empty* organ: its organ code (into the index's organ names), voxel count, volume, bounding
box, centroids and border flag. The label value and the RAS centroid are not stored: they follow
from the mapping and the LPS centroid.

Statistics rounded to a fixed number of decimals (volume to 1e-6 ml, centroids to 1e-3) are
stored as integers of that unit when that is exact, in the narrowest integer type that holds
them, byte-shuffled and Zstd-compressed; a column that is not exact in that unit is stored as
float64. The shuffle has numcodecs' ``Shuffle`` layout (byte 0 of every value, then byte 1, ...),
done as a NumPy transpose: importing numcodecs would cost a cold query ~70 ms. Every blob ends
with its crc32c, and its decoded size is declared by the manifest, so a damaged or crafted blob is
refused before it is decompressed.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import zstandard

from medmask_store.codecs.chunks import append_crc32c, strip_crc32c
from medmask_store.errors import CorruptChunk, CorruptMetadata

AXES = ("i", "j", "k")
LPS_CENTROID = ("centroid_lps_x_mm", "centroid_lps_y_mm", "centroid_lps_z_mm")
BBOX = tuple(f"bbox_{a}{end}" for a in AXES for end in ("0", "1"))
VOXEL_CENTROID = tuple(f"centroid_{a}" for a in AXES)
# Stored per row, with the unit they are stored in (1 / scale) where they are rounded decimals.
ROW_COLUMNS: dict[str, int] = {
    "case": 1, "organ": 1, "voxels": 1, "volume_ml": 10**6,
    **dict.fromkeys(BBOX, 1), **dict.fromkeys(VOXEL_CENTROID, 1000), **dict.fromkeys(LPS_CENTROID, 1000),
    "touches_border": 1,
}  # fmt: skip
CASE_COLUMNS = ("case_id", "token", "mapping", "mappings")
INTEGER_TYPES = tuple(np.dtype(t) for t in ("u1", "i1", "u2", "i2", "u4", "i4", "i8"))
KINDS = frozenset(("json", "<f8", *(t.newbyteorder("<").str for t in INTEGER_TYPES)))  # what a blob may hold
LEVEL = 9
MAX_BLOB_BYTES = 1 << 30  # what a manifest may declare for one decoded blob


class MissingBlob(CorruptMetadata):
    """A blob the index manifest names is not stored (a writer replaced the index since it was read)."""


@dataclass
class Segment:
    """Cases and their non-empty organ rows; a stored segment decodes each column on first use.

    ``columns`` holds decoded columns: ``case_id`` / ``token`` (lists of str), ``mapping`` (int array of
    codes into ``mappings``: lists of ``[organ code, value]`` pairs), ``meta.<n>`` (the cases holding the
    n-th key of ``meta_keys`` and their values) and the :data:`ROW_COLUMNS` (arrays, one entry per row).
    """

    cases: int
    rows: int
    meta_keys: list[str]
    organ_codes: list[int]  # the organs of its cases' mappings (empty ones too), by code
    columns: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # the stored segment's name (blobs ``<name>/<column>``); None: in memory only
    blobs: dict[str, list[Any]] = field(default_factory=dict)  # column -> [kind, decoded bytes, scale]
    read: Callable[[str], bytes | None] | None = None

    # -- reading --------------------------------------------------------------
    def column(self, key: str) -> Any:
        """One column, decoded from its blob on first use."""
        if key not in self.columns:
            if self.read is None or key not in self.blobs:
                raise CorruptMetadata(f"index segment {self.name!r} has no column {key!r}")
            blob_name = f"{self.name}/{key}"
            data = self.read(blob_name)
            if data is None:
                raise MissingBlob(f"the index blob {blob_name!r} is missing")
            self.columns[key] = _checked(
                key, _decode(data, self.blobs[key], self._length(key), blob_name), self, blob_name
            )
        return self.columns[key]

    def _length(self, key: str) -> int:
        if key in ROW_COLUMNS:
            return self.rows
        return self.cases if key in ("case_id", "token", "mapping") else -1

    def meta_column(self, key: str) -> tuple[np.ndarray, list[Any]]:
        """The positions of the cases holding metadata ``key`` and their values."""
        if key not in self.meta_keys:
            return np.zeros(0, dtype=np.int64), []
        stored = self.column(f"meta.{self.meta_keys.index(key)}")
        return np.asarray(stored["cases"], dtype=np.int64), stored["values"]

    def metas(self) -> list[dict[str, Any]]:
        """Every case's metadata dict."""
        metas: list[dict[str, Any]] = [{} for _ in range(self.cases)]
        for key in self.meta_keys:
            positions, values = self.meta_column(key)
            for position, value in zip(positions.tolist(), values):
                metas[position][key] = value
        return metas

    def case_mappings(self) -> list[list[list[int]]]:
        """Each case's mapping as ``[organ code, value]`` pairs."""
        mappings = self.column("mappings")
        return [mappings[code] for code in self.column("mapping").tolist()]

    def loaded(self) -> Segment:
        """The segment with every column decoded, held in memory."""
        keys = [*CASE_COLUMNS, *ROW_COLUMNS, *(f"meta.{n}" for n in range(len(self.meta_keys)))]
        columns = {key: self.column(key) for key in keys}
        check_mapping_codes(self)
        return Segment(self.cases, self.rows, list(self.meta_keys), list(self.organ_codes), columns)

    # -- building -------------------------------------------------------------
    @classmethod
    def build(
        cls,
        case_ids: Sequence[str],
        tokens: Sequence[str],
        mapping: np.ndarray,
        mappings: list[list[list[int]]],
        metas: Sequence[dict[str, Any]],
        rows: dict[str, np.ndarray],
    ) -> Segment:
        """A segment from per-case lists (``mapping``: each case's code into the distinct ``mappings``, each
        a list of ``[organ code, value]``) and per-row arrays (``rows["case"]``: the row's case position)."""
        keys = list(dict.fromkeys(key for meta in metas for key in meta))
        columns: dict[str, Any] = {
            "case_id": list(case_ids), "token": list(tokens), "mapping": np.asarray(mapping, dtype=np.int64),
            "mappings": mappings,
        }  # fmt: skip
        for n, key in enumerate(keys):
            holding = [p for p, meta in enumerate(metas) if key in meta]
            columns[f"meta.{n}"] = {"cases": holding, "values": [metas[p][key] for p in holding]}
        for key in ROW_COLUMNS:
            if len(rows[key]) != len(rows["case"]):
                raise ValueError(f"row column {key!r} has {len(rows[key])} rows, 'case' has {len(rows['case'])}")
        order = np.argsort(rows["case"], kind="stable")  # rows by case: a range of cases is a range of rows
        columns.update({key: np.asarray(rows[key])[order] for key in ROW_COLUMNS})
        return cls._of(columns, keys)

    @classmethod
    def _of(cls, columns: dict[str, Any], meta_keys: list[str]) -> Segment:
        """An in-memory segment of complete columns."""
        codes = sorted({code for mapping in columns["mappings"] for code, _ in mapping})
        return cls(len(columns["case_id"]), len(columns["case"]), meta_keys, codes, columns)

    @classmethod
    def concat(cls, segments: Sequence[Segment]) -> Segment:
        """One in-memory segment of every case and row of ``segments``."""
        parts = [s.loaded() for s in segments]
        if len(parts) == 1:
            return parts[0]
        offsets = np.cumsum([0, *(p.cases for p in parts)])
        distinct: dict[str, int] = {}
        codes = []
        for p in parts:
            remap = [distinct.setdefault(json.dumps(m), len(distinct)) for m in p.columns["mappings"]]
            codes.append(np.asarray(remap, dtype=np.int64)[p.columns["mapping"]] if remap else p.columns["mapping"])
        columns: dict[str, Any] = {
            "case_id": [c for p in parts for c in p.columns["case_id"]],
            "token": [t for p in parts for t in p.columns["token"]],
            "mapping": np.concatenate(codes) if codes else np.zeros(0, np.int64),
            "mappings": [json.loads(m) for m in distinct],
            **{key: np.concatenate([p.columns[key] for p in parts]) if parts else np.zeros(0) for key in ROW_COLUMNS},
        }
        columns["case"] = (
            np.concatenate([p.columns["case"] + o for p, o in zip(parts, offsets)]) if parts else np.zeros(0, np.int64)
        )
        keys = list(dict.fromkeys(key for p in parts for key in p.meta_keys))
        for n, key in enumerate(keys):
            held = [(p.meta_column(key), o) for p, o in zip(parts, offsets)]
            columns[f"meta.{n}"] = {
                "cases": [int(c) + int(o) for (cases, _), o in held for c in cases],
                "values": [v for (_, values), _ in held for v in values],
            }
        return cls._of(columns, keys)

    def select(self, keep: np.ndarray) -> Segment:
        """An in-memory segment of the cases where ``keep`` (one bool per case) is true."""
        whole = self.loaded().columns
        position = np.cumsum(keep) - 1
        kept = np.flatnonzero(keep)
        rows = keep[whole["case"]]
        columns: dict[str, Any] = {key: whole[key][rows] for key in ROW_COLUMNS}
        columns["case"] = position[columns["case"]]
        columns["case_id"] = [whole["case_id"][p] for p in kept]
        columns["token"] = [whole["token"][p] for p in kept]
        used, columns["mapping"] = np.unique(whole["mapping"][kept], return_inverse=True)
        columns["mappings"] = [whole["mappings"][code] for code in used.tolist()]
        keys: list[str] = []
        for key in self.meta_keys:
            cases, values = self.meta_column(key)
            held = np.flatnonzero(keep[cases]) if cases.size else cases
            if held.size:
                columns[f"meta.{len(keys)}"] = {
                    "cases": position[cases[held]].tolist(),
                    "values": [values[i] for i in held],
                }
                keys.append(key)
        return Segment._of(columns, keys)

    def split(self, max_rows: int) -> list[Segment]:
        """In-memory segments of at most ``max_rows`` rows each (more where one case has more), cut between cases."""
        case_rows = np.bincount(self.column("case"), minlength=self.cases)
        pieces, start, size = [], 0, 0
        for position, count in enumerate(case_rows.tolist()):
            if size and size + count > max_rows:
                pieces.append((start, position))
                start, size = position, 0
            size += count
        pieces.append((start, self.cases))
        if len(pieces) == 1:
            return [self.loaded()]
        cases = np.arange(self.cases)
        return [self.select((cases >= a) & (cases < b)) for a, b in pieces]

    # -- storing ----------------------------------------------------------------
    def encode(self, name: str) -> tuple[dict[str, Any], dict[str, bytes]]:
        """The manifest entry of this segment stored as ``name``, and its blobs by name."""
        blobs, descriptors = {}, {}
        for key, values in self.loaded().columns.items():
            descriptor, data = _encode(values, ROW_COLUMNS.get(key, 0))
            descriptors[key] = descriptor
            blobs[f"{name}/{key}"] = data
        return self.entry(name, descriptors), blobs

    def entry(self, name: str, blobs: dict[str, list[Any]]) -> dict[str, Any]:
        """The segment's manifest entry."""
        return {
            "name": name,
            "cases": self.cases,
            "rows": self.rows,
            "meta": self.meta_keys,
            "organs": self.organ_codes,
            "blobs": blobs,
        }

    @classmethod
    def stored(cls, entry: Any, read: Callable[[str], bytes | None]) -> Segment:
        """A stored segment from its manifest entry (checked); its columns are read on first use."""
        try:
            name, cases, rows, meta, organs, blobs = (
                entry[k] for k in ("name", "cases", "rows", "meta", "organs", "blobs")
            )
            valid = (
                isinstance(name, str) and name.isidentifier()
                and all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in (cases, rows))
                and isinstance(meta, list) and all(isinstance(k, str) for k in meta) and len(set(meta)) == len(meta)
                and isinstance(organs, list) and all(type(code) is int and code >= 0 for code in organs)
                and isinstance(blobs, dict)
                and set(blobs) == {*CASE_COLUMNS, *ROW_COLUMNS, *(f"meta.{n}" for n in range(len(meta)))}
                and all(_valid_descriptor(d) for d in blobs.values())
            )  # fmt: skip
        except (TypeError, KeyError):
            valid = False
        if not valid:
            raise CorruptMetadata(f"an index segment entry is malformed: {str(entry)[:200]}")
        return cls(cases, rows, meta, organs, name=name, blobs=blobs, read=read)


def _valid_descriptor(descriptor: Any) -> bool:
    if not (isinstance(descriptor, list) and len(descriptor) == 3):
        return False
    kind, size, scale = descriptor
    return (
        kind in KINDS
        and isinstance(size, int)
        and 0 <= size <= MAX_BLOB_BYTES
        and isinstance(scale, int)
        and scale >= 0
    )


def _encode(values: Any, scale: int) -> tuple[list[Any], bytes]:
    """A column's descriptor ``[kind, decoded bytes, scale]`` and its blob."""
    if not isinstance(values, np.ndarray):
        raw = json.dumps(values, separators=(",", ":"), ensure_ascii=False).encode()
        return ["json", len(raw), 0], _compressed(raw)
    numbers = values.astype(np.int64) if values.dtype == bool else values
    if scale > 1 and numbers.dtype.kind == "f":
        with np.errstate(over="ignore", invalid="ignore"):  # inf and overflow: not exact, stored as float64
            units = np.rint(numbers * scale)
        exact = (
            np.isfinite(numbers).all()
            and np.abs(units).max(initial=0) < 2**53
            and np.array_equal(units / scale, numbers)
        )
        numbers, scale = (units.astype(np.int64), scale) if exact else (numbers.astype(np.float64), 0)
    kind: np.dtype[Any]
    if numbers.dtype.kind == "f":
        kind = np.dtype("<f8")
    else:
        low, high = (int(numbers.min()), int(numbers.max())) if numbers.size else (0, 0)
        kind = next(t for t in INTEGER_TYPES if np.iinfo(t).min <= low and high <= np.iinfo(t).max)
    little = np.ascontiguousarray(numbers, dtype=kind.newbyteorder("<"))
    shuffled = little.view(np.uint8).reshape(-1, kind.itemsize).T.tobytes()  # byte 0 of each value, byte 1, ...
    return [kind.newbyteorder("<").str if kind.itemsize > 1 else kind.str, len(shuffled), max(scale, 1)], (
        _compressed(shuffled)
    )


def _compressed(raw: bytes) -> bytes:
    return append_crc32c(zstandard.ZstdCompressor(level=LEVEL).compress(raw))


def _decode(data: bytes, descriptor: list[Any], length: int, where: str) -> Any:
    """A column from its blob: checksum, declared size, element count and values checked."""
    kind, size, scale = descriptor
    try:
        frame = strip_crc32c(data)
    except CorruptChunk:
        raise CorruptMetadata(f"the index blob {where!r} fails its checksum: it was changed or damaged") from None
    try:
        if zstandard.get_frame_parameters(frame).content_size != size:
            raise ValueError(f"its frame does not declare the manifest's {size} bytes")
        raw = zstandard.ZstdDecompressor().decompress(frame, max_output_size=size)
        if kind == "json":
            return json.loads(raw)
        dtype = np.dtype(kind)
        if len(raw) != length * dtype.itemsize:
            raise ValueError(f"it holds {len(raw)} bytes, {length} values of {kind} take {length * dtype.itemsize}")
        values = np.frombuffer(raw, np.uint8)
        if dtype.itemsize > 1:  # unshuffle: byte 0 of every value, then byte 1, ...
            values = values.reshape(dtype.itemsize, length).T.copy()
        values = values.view(dtype).ravel()
        return (
            values.astype(np.float64) / scale if scale > 1 else values.astype(np.float64 if kind == "<f8" else np.int64)
        )
    except (zstandard.ZstdError, ValueError, RecursionError) as exc:
        raise CorruptMetadata(f"the index blob {where!r} is malformed ({type(exc).__name__}: {exc})") from exc


def check_mapping_codes(segment: Segment) -> None:
    """:class:`CorruptMetadata` unless every case's mapping code names one of the segment's mappings."""
    codes, count = segment.column("mapping"), len(segment.column("mappings"))
    if codes.size and (codes.min() < 0 or codes.max() >= count):
        raise CorruptMetadata(f"index segment {segment.name!r} names mapping {codes.max()}, it holds {count}")


def _checked(key: str, value: Any, segment: Segment, where: str) -> Any:
    """A decoded column, if its shape and references agree with its segment (else :class:`CorruptMetadata`)."""
    if key in ("case_id", "token"):
        valid = isinstance(value, list) and len(value) == segment.cases and set(map(type, value)) <= {str}
    elif key == "mappings":
        valid = isinstance(value, list) and all(
            isinstance(m, list) and all(type(p) is list and len(p) == 2 and set(map(type, p)) == {int} for p in m)
            for m in value
        )
    elif key == "case":
        valid = not value.size or (0 <= value.min() and value.max() < segment.cases)
    elif key.startswith("meta."):
        cases = value.get("cases") if isinstance(value, dict) else None
        valid = (
            isinstance(cases, list) and set(map(type, cases)) <= {int} and cases == sorted(set(cases))
            and (not cases or 0 <= cases[0] and cases[-1] < segment.cases)
            and isinstance(value.get("values"), list) and len(value["values"]) == len(cases)
        )  # fmt: skip
    else:
        return value
    if not valid:
        raise CorruptMetadata(f"the index blob {where!r} is malformed (not a {key} column of {segment.cases} cases)")
    return value


def row_arrays(records: Iterable[Sequence[float]]) -> dict[str, np.ndarray]:
    """Row columns from records of :data:`ROW_COLUMNS` values, in that order."""
    table = np.asarray(list(records), dtype=np.float64).reshape(-1, len(ROW_COLUMNS))
    integers = {"case", "organ", "voxels", *BBOX}
    return {
        key: table[:, n].astype(np.int64)
        if key in integers
        else table[:, n].astype(bool)
        if key == "touches_border"
        else table[:, n]
        for n, key in enumerate(ROW_COLUMNS)
    }
