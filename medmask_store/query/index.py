"""The archive index: per-case, per-organ statistics and case metadata, column by column.

The index is a manifest (one small blob: the organ names, the listing version it was built from, and
its segments) and :mod:`segments <medmask_store.query.segments>` of about :data:`SEGMENT_ROWS` organ
rows each, every column of a segment one compressed blob. Only organs with voxels have rows; a
query reads the manifest and, of each segment, the columns it touches. Adding or deleting cases
rewrites the last, unfilled segment (or the segments that held the deleted cases) and the
manifest; every other blob stays as it is.

Each case carries the backend's version token of the stored case, and the manifest the version
of the case listing it was built from; readers whose listing changed since reconcile the stored
index with the cases present (:meth:`ArchiveIndex.reconcile`).
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import zstandard

from medmask_store.codecs.chunks import append_crc32c, strip_crc32c
from medmask_store.errors import CorruptChunk, CorruptMetadata
from medmask_store.model.attributes import CaseInfo
from medmask_store.query.segments import (
    BBOX,
    LPS_CENTROID,
    ROW_COLUMNS,
    VOXEL_CENTROID,
    Segment,
    check_mapping_codes,
    row_arrays,
)  # fmt: skip

if TYPE_CHECKING:
    import pandas as pd  # imported by the tables alone: a query imports no pandas

# World centroids name their frame: LPS (the Space's, DICOM's) is stored, RAS (NIfTI's) derived on read.
RAS_CENTROID = ("centroid_ras_x_mm", "centroid_ras_y_mm", "centroid_ras_z_mm")
ORGAN_FIELDS = ("value", "voxels", "volume_ml", *BBOX, *VOXEL_CENTROID, *LPS_CENTROID, *RAS_CENTROID, "touches_border")
# Names of LPS centroid fields before they named their frame: queries still take them, with a warning.
RENAMED_FIELDS = dict(zip(("centroid_x_mm", "centroid_y_mm", "centroid_z_mm"), LPS_CENTROID))
INTEGER_FIELDS = ("value", "voxels")
FLOAT_FIELDS = tuple(f for f in ORGAN_FIELDS if f not in INTEGER_FIELDS and f != "touches_border")
MANIFEST = "manifest"  # the index blob naming every other
FORMAT = 1
SEGMENT_ROWS = 16384  # a full segment of TotalSegmentator-like rows is ~0.4 MB: what one add rewrites at most
MAX_MANIFEST_BYTES = 64 << 20
PARALLEL_READS = 8  # blobs read at once from object stores, which answer them in parallel


def meta_column_name(key: str) -> str:
    """A metadata key's column in the statistics tables: ``meta.<key>`` where it would clash with a row key
    (``case_id``, ``organ``) or an organ field, whether that field is asked for or not."""
    return f"meta.{key}" if key in ("case_id", "organ", *ORGAN_FIELDS) else key


def _stored_columns(fields: Iterable[str]) -> list[str]:
    """The row columns that give ``fields``."""
    needed = {"case", "organ"}
    for name in fields:
        if name in RAS_CENTROID:
            needed.add(LPS_CENTROID[RAS_CENTROID.index(name)])
        elif name in ROW_COLUMNS:
            needed.add(name)
    return [key for key in ROW_COLUMNS if key in needed]


class ArchiveIndex:
    """Cases (id, version token, mapping, metadata) and their non-empty organs' statistics, in segments."""

    def __init__(
        self,
        organ_names: Sequence[str] = (),
        segments: Sequence[Segment] = (),
        listing_version: str = "",
        parallel_reads: int = 1,
    ) -> None:
        self.organ_names = list(organ_names)  # every organ code's name (append-only until a rebuild)
        self.segments = list(segments)
        self.listing_version = listing_version  # the backend's listing version it was built from
        self.parallel_reads = parallel_reads  # blobs read at once
        self._as_stored = [s for s in self.segments if s.name]  # the segments the stored manifest lists

    # -- building -------------------------------------------------------------
    @classmethod
    def from_cases(cls, cases: Iterable[tuple[CaseInfo, str]]) -> ArchiveIndex:
        """Build (in memory) from stored cases and their version tokens, :data:`SEGMENT_ROWS` rows' worth of
        cases at a time (memory holds their statistics as columns, not the cases)."""
        index = cls()
        index._append(cases)
        return index

    def _append(self, cases: Iterable[tuple[CaseInfo, str]]) -> int:
        """Add cases (ids not in the index), :data:`SEGMENT_ROWS` rows' worth at a time: memory holds their
        statistics as columns, not the cases. Returns how many were added."""
        cases, added = iter(cases), 0
        while chunk := list(itertools.islice(cases, SEGMENT_ROWS // 32)):
            self.segments.append(self._segment_of(chunk))
            added += len(chunk)
        return added

    def _codes(self, names: Iterable[str]) -> list[int]:
        codes = {name: code for code, name in enumerate(self.organ_names)}
        result = []
        for name in names:
            if name not in codes:
                codes[name] = len(self.organ_names)
                self.organ_names.append(name)
            result.append(codes[name])
        return result

    def _segment_of(self, cases: list[tuple[CaseInfo, str]]) -> Segment:
        records, codes = [], []
        distinct: dict[tuple[tuple[int, int], ...], int] = {}
        for position, (info, _) in enumerate(cases):
            organ_codes = self._codes(info.mapping)
            mapping = tuple(sorted(zip(organ_codes, info.mapping.values())))
            codes.append(distinct.setdefault(mapping, len(distinct)))
            for code, organ in zip(organ_codes, info.mapping):
                s = info.stats[organ]
                if s.voxels and s.bbox and s.centroid_voxel and s.centroid_lps_mm:
                    box = [v for pair in s.bbox for v in pair]
                    stats = (s.voxels, s.volume_ml, *box, *s.centroid_voxel, *s.centroid_lps_mm, s.touches_border)
                    records.append((position, code, *stats))
        return Segment.build(
            [info.case_id for info, _ in cases], [token for _, token in cases], np.asarray(codes, dtype=np.int64),
            [[list(pair) for pair in mapping] for mapping in distinct], [dict(info.meta) for info, _ in cases],
            row_arrays(records),
        )  # fmt: skip

    def add_rows(self, cases: pd.DataFrame, mappings: Sequence[dict[str, int]], rows: pd.DataFrame) -> None:
        """Add cases from tables: ``cases`` (``case_id``, ``token``, ``meta``), each case's mapping (organ name ->
        value), and one row per non-empty organ (``case_id``, ``organ`` and the stored statistics: ``voxels``,
        ``volume_ml``, ``bbox_*``, ``centroid_i/j/k``, ``centroid_lps_*_mm``, ``touches_border``)."""
        import pandas as pd

        distinct = {id(mapping): mapping for mapping in mappings}  # datasets share a few mapping objects
        self._codes(name for mapping in distinct.values() for name in mapping)
        organ_code = dict(zip(self.organ_names, range(len(self.organ_names))))
        position = pd.Series(np.arange(len(cases)), index=cases["case_id"].to_numpy())
        arrays = {key: rows[key].to_numpy() for key in ROW_COLUMNS if key not in ("case", "organ")}
        located = (position.reindex(rows["case_id"].to_numpy()), rows["organ"].map(organ_code))
        if any(column.isna().any() for column in located):
            raise ValueError("rows name cases or organs that are not among the cases or their mappings")
        arrays["case"], arrays["organ"] = (column.to_numpy().astype(np.int64) for column in located)
        order = {key: n for n, key in enumerate(distinct)}
        coded = [sorted([organ_code[name], value] for name, value in mapping.items()) for mapping in distinct.values()]
        codes = np.asarray([order[id(mapping)] for mapping in mappings], dtype=np.int64)
        mapped = np.zeros((len(coded), len(self.organ_names)), dtype=bool)
        for row, pairs in enumerate(coded):
            mapped[row, [code for code, _ in pairs]] = True
        if not mapped[codes[arrays["case"]], arrays["organ"]].all():
            raise ValueError("rows name organs that are not in their case's mapping")
        segment = Segment.build(
            cases["case_id"].tolist(), cases["token"].tolist(), codes, coded, cases["meta"].tolist(), arrays
        )
        self.segments.append(segment)

    def _prefetch(self, keys: Sequence[str], meta: Sequence[str] = ()) -> None:
        """Read the columns ``keys`` and metadata ``meta`` of every stored segment, :attr:`parallel_reads` at a time."""
        wanted = [
            (s, key)
            for s in self.segments
            for key in dict.fromkeys([*keys, *(f"meta.{s.meta_keys.index(k)}" for k in meta if k in s.meta_keys)])
            if key not in s.columns
        ]
        if self.parallel_reads > 1 and len(wanted) > 1:
            with ThreadPoolExecutor(self.parallel_reads) as pool:
                list(pool.map(lambda pair: pair[0].column(pair[1]), wanted))

    # -- cases ----------------------------------------------------------------
    @property
    def case_ids(self) -> list[str]:
        return sorted(self.ordered_case_ids())

    def ordered_case_ids(self) -> list[str]:
        """Every case id, in stored order: the order of :meth:`meta_values` and :meth:`organ_columns`."""
        self._prefetch(["case_id"])
        return [c for s in self.segments for c in s.column("case_id")]

    def tokens(self) -> dict[str, str]:
        self._prefetch(["case_id", "token"])
        return {c: t for s in self.segments for c, t in zip(s.column("case_id"), s.column("token"))}

    @property
    def cases(self) -> pd.DataFrame:
        """One row per case: ``case_id``, ``token`` and ``meta`` (its metadata dict)."""
        import pandas as pd

        self._prefetch(["case_id", "token"], self.meta_keys)
        columns: dict[str, list[Any]] = {"case_id": [], "token": [], "meta": []}
        for s in self.segments:
            columns["case_id"] += s.column("case_id")
            columns["token"] += s.column("token")
            columns["meta"] += s.metas()
        return pd.DataFrame(columns, dtype=object)

    def mappings(self) -> dict[str, dict[str, int]]:
        """Every case's label mapping (organ name -> value)."""
        return {
            case_id: {self.organ_names[code]: value for code, value in mapping}
            for s in self.segments
            for case_id, mapping in zip(s.column("case_id"), s.case_mappings())
        }

    @property
    def meta_keys(self) -> list[str]:
        """Every metadata key of any case (from the manifest: no blob is read)."""
        return list(dict.fromkeys(key for s in self.segments for key in s.meta_keys))

    # -- consistency ------------------------------------------------------------
    def reconcile(self, live_tokens: dict[str, str], read_info: Callable[[str], CaseInfo | None]) -> bool:
        """Drop cases that are gone, (re)read cases that are new or changed; return whether any was.

        ``read_info`` returns None for a case to leave out (a damaged one).
        """
        known = self.tokens()
        stale = {c for c, token in known.items() if live_tokens.get(c) != token}
        self._remove(stale)
        read = ((read_info(c), token) for c, token in live_tokens.items() if known.get(c) != token)
        return self._append((info, token) for info, token in read if info is not None) > 0 or bool(stale)

    def replace(self, removed: set[str], added: list[tuple[CaseInfo, str]]) -> None:
        """Remove cases and add (or re-add) others; only segments holding removed cases are rewritten."""
        self._remove(removed | {info.case_id for info, _ in added})
        self._append(added)

    def _remove(self, removed: set[str]) -> None:
        if not removed:
            return
        kept = []
        for segment in self.segments:
            keep = np.array([c not in removed for c in segment.column("case_id")], dtype=bool)
            if keep.all():
                kept.append(segment)
            elif keep.any():
                kept.append(segment.select(keep))
        self.segments = kept

    # -- storing ------------------------------------------------------------------
    @classmethod
    def load(
        cls, read: Callable[[str], bytes | None], where: object = "the archive index", parallel_reads: int = 1
    ) -> ArchiveIndex | None:
        """The stored index (its manifest read; segments' columns on first use), or None if none is stored.

        ``parallel_reads``: blobs read at once (object stores answer in parallel; local files are read
        fastest one at a time). A damaged manifest raises :class:`CorruptMetadata` naming ``where``."""
        data = read(MANIFEST)
        if data is None:
            return None
        fix = "run `medmask-store reindex` to rebuild it from the cases"
        try:
            frame = strip_crc32c(data)
        except CorruptChunk:
            raise CorruptMetadata(f"{where} fails its checksum: it was changed or damaged; {fix}") from None
        try:
            declared = zstandard.get_frame_parameters(frame).content_size
            if not 0 <= declared <= MAX_MANIFEST_BYTES:
                raise ValueError(f"its manifest declares {declared} bytes")
            manifest = json.loads(zstandard.ZstdDecompressor().decompress(frame, max_output_size=MAX_MANIFEST_BYTES))
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError(f"it is not an index manifest of format {FORMAT}")
            organs, version, entries = manifest["organs"], manifest["listing_version"], manifest["segments"]
            if not (isinstance(organs, list) and all(isinstance(o, str) for o in organs) and isinstance(version, str)):
                raise ValueError("its organ names or listing version are malformed")
            if not isinstance(entries, list):
                raise ValueError("its segment list is malformed")
            segments = [Segment.stored(entry, read) for entry in entries]
            if len({s.name for s in segments}) != len(segments):
                raise ValueError("two of its segments have one name")
        except (zstandard.ZstdError, ValueError, KeyError, RecursionError, CorruptMetadata) as exc:
            raise CorruptMetadata(f"{where} is malformed ({type(exc).__name__}: {exc}); {fix}") from exc
        return cls(organs, segments, version, parallel_reads)

    def changes(self, max_rows: int = SEGMENT_ROWS) -> tuple[dict[str, bytes], list[str]]:
        """What storing the index writes: new blobs (the manifest last), and the blobs no longer used.

        New and rewritten cases join the last stored segment while it has fewer than ``max_rows``
        rows, then fill new segments of ``max_rows`` rows; afterwards the index is as stored.
        """
        stored = [s for s in self.segments if s.name]
        fresh = [s for s in self.segments if not s.name]
        if fresh and stored and stored[-1].rows < max_rows:
            fresh.insert(0, stored.pop())
        pieces = [p for p in Segment.concat(fresh).split(max_rows) if p.cases] if fresh else []
        blobs: dict[str, bytes] = {}
        for piece in pieces:
            name = f"s{uuid.uuid4().hex[:16]}"
            entry, encoded = piece.encode(name)
            blobs.update(encoded)
            piece.name, piece.blobs = name, entry["blobs"]
        self.segments = [*stored, *pieces]
        kept = {s.name for s in self.segments}
        garbage = [f"{s.name}/{key}" for s in self._as_stored if s.name not in kept for key in s.blobs]
        self._as_stored = list(self.segments)
        blobs[MANIFEST] = self._manifest()
        return blobs, garbage

    def _manifest(self) -> bytes:
        entries = [s.entry(s.name, s.blobs) for s in self.segments if s.name]
        manifest = {
            "format": FORMAT,
            "listing_version": self.listing_version,
            "organs": self.organ_names,
            "segments": entries,
        }
        raw = json.dumps(manifest, separators=(",", ":"), ensure_ascii=False).encode()
        return append_crc32c(zstandard.ZstdCompressor(level=9).compress(raw))

    # -- tables -----------------------------------------------------------------------
    def present_organs(self) -> list[str]:
        """The organs of any case's mapping, sorted (empty organs included)."""
        codes = {code for s in self.segments for code in s.organ_codes}
        if any(code >= len(self.organ_names) for code in codes):
            raise CorruptMetadata(
                f"a mapping of the index names organ code {max(codes)}, it lists {len(self.organ_names)} organs"
            )
        return sorted(self.organ_names[code] for code in codes)

    def _organ_codes(self, organs: Sequence[str] | None) -> tuple[np.ndarray, list[str]]:
        """Each organ code's rank among the sorted names asked for (-1: not asked for), and those names."""
        names = self.present_organs() if organs is None else sorted(set(organs))
        rank = np.full(len(self.organ_names), -1, dtype=np.int64)
        codes = {name: code for code, name in enumerate(self.organ_names)}
        for position, name in enumerate(names):
            if name in codes:
                rank[codes[name]] = position
        return rank, names

    def _gathered(self, keys: Sequence[str]) -> tuple[list[str], dict[str, np.ndarray], np.ndarray, np.ndarray]:
        """Every segment's rows at once: the case ids, the row columns ``keys`` with ``case`` (the row's case,
        by position among the ids) and ``organ``, each case's mapping (a code), and the label value by
        (mapping code, organ code), -1 where the mapping lacks the organ."""
        self._prefetch(["case_id", "mapping", "mappings", "case", "organ", *keys])
        ids: list[str] = []
        parts: dict[str, list[np.ndarray]] = {key: [] for key in ("case", "organ", *keys)}
        tables, codes, cases, mappings = [], [], 0, 0
        for s in self.segments:
            ids += s.column("case_id")
            for key in parts:
                parts[key].append(s.column(key) + cases if key == "case" else s.column(key))
            tables.append(self._values(s))
            codes.append(s.column("mapping") + mappings)
            cases, mappings = cases + s.cases, mappings + len(tables[-1])
        rows = {key: np.concatenate(values) if values else np.zeros(0, np.int64) for key, values in parts.items()}
        organ = rows["organ"]
        if organ.size and (organ.min() < 0 or organ.max() >= len(self.organ_names)):
            raise CorruptMetadata("the index has rows of organs it does not name")
        if not tables:
            return ids, rows, np.zeros(0, np.int64), np.zeros((0, len(self.organ_names)), np.int64)
        return ids, rows, np.concatenate(codes), np.concatenate(tables)

    def _long(
        self, fields: Sequence[str], rank: np.ndarray, include_empty: bool
    ) -> tuple[list[str], dict[str, np.ndarray]]:
        """The case ids and the rows of the organs ``rank`` ranks: ``case`` (position among the ids), ``organ``
        (code) and ``fields``; with ``include_empty`` also a row per mapped organ without voxels."""
        ids, rows, mapping, values = self._gathered(_stored_columns(fields))
        keep = rank[rows["organ"]] >= 0
        case, organ = rows["case"][keep], rows["organ"][keep]
        long: dict[str, np.ndarray] = {"case": case, "organ": organ}
        for name in fields:
            if name == "value":
                long[name] = values[mapping[case], organ]
            elif name in RAS_CENTROID:
                lps = rows[LPS_CENTROID[RAS_CENTROID.index(name)]][keep]
                long[name] = lps if name.endswith("z_mm") else 0.0 - lps  # not -x: a 0 would print as -0.0
            else:
                long[name] = rows[name][keep].astype(bool) if name == "touches_border" else rows[name][keep]
        if include_empty:
            asked = np.flatnonzero(rank >= 0)
            missing = (values[:, asked] >= 0)[mapping]  # (case, organ asked): mapped...
            missing[case, np.searchsorted(asked, organ)] = False  # ...without a row
            empty_case, column = np.nonzero(missing)
            empty_organ = asked[column]
            empty = {"case": empty_case, "organ": empty_organ}
            for name in fields:
                if name == "value":
                    empty[name] = values[mapping[empty_case], empty_organ]
                elif name in INTEGER_FIELDS or name == "touches_border":
                    empty[name] = np.zeros(empty_case.size, dtype=bool if name == "touches_border" else np.int64)
                else:
                    empty[name] = np.full(empty_case.size, 0.0 if name == "volume_ml" else np.nan)
            long = {key: np.concatenate([long[key], empty[key]]) for key in long}
        return ids, long

    def organ_rows(
        self, fields: Sequence[str] = ORGAN_FIELDS, organs: Sequence[str] | None = None, include_empty: bool = False
    ) -> pd.DataFrame:
        """One row per case × organ with voxels (or, with ``include_empty``, per organ of its mapping):
        ``case_id``, ``organ`` (categoricals, sorted categories) and ``fields``, sorted by case and organ.

        Only the columns ``fields`` need are read."""
        import pandas as pd

        rank, names = self._organ_codes(organs)
        ids, long = self._long(fields, rank, include_empty)
        by_id = np.argsort(np.asarray(ids, dtype=str), kind="stable")
        case_rank = np.empty(len(ids), dtype=np.int64)
        case_rank[by_id] = np.arange(len(ids))
        case, organ = case_rank[long.pop("case")], rank[long.pop("organ")]
        order = np.lexsort((organ, case))
        frame = pd.DataFrame({"case_id": case[order], "organ": organ[order], **{f: long[f][order] for f in fields}})
        frame["case_id"] = pd.Categorical.from_codes(frame["case_id"], pd.Index([ids[p] for p in by_id], dtype=object))
        frame["organ"] = pd.Categorical.from_codes(frame["organ"], pd.Index(names, dtype=object))
        return frame

    def organ_columns(self, pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], np.ndarray]:
        """For each ``(organ, field)`` one value per case (in :meth:`ordered_case_ids` order): the organ's
        statistic, an empty organ's (0 voxels) where the case maps it without voxels, NaN where its
        mapping lacks the organ."""
        if not pairs:
            return {}
        fields = list(dict.fromkeys(field for _, field in pairs))
        rank, _ = self._organ_codes([organ for organ, _ in pairs])
        ids, long = self._long(fields, rank, include_empty=True)
        codes = {name: code for code, name in enumerate(self.organ_names)}
        columns = {}
        for organ, field in pairs:
            column = np.full(len(ids), np.nan)
            rows = long["organ"] == codes.get(organ, -1)
            column[long["case"][rows]] = long[field][rows]
            columns[organ, field] = column
        return columns

    def _values(self, s: Segment) -> np.ndarray:
        """Label value by (mapping code, organ code); -1 where the mapping has no such organ."""
        mappings = s.column("mappings")
        table = np.full((len(mappings), len(self.organ_names)), -1, dtype=np.int64)
        for row, mapping in enumerate(mappings):
            try:
                pairs = np.asarray(mapping, dtype=np.int64).reshape(-1, 2)
            except OverflowError:
                raise CorruptMetadata(f"index segment {s.name!r} maps a label value beyond int64") from None
            if pairs.size and (pairs[:, 0].min() < 0 or pairs[:, 0].max() >= len(self.organ_names)):
                raise CorruptMetadata(f"index segment {s.name!r} maps organ codes beyond its {len(self.organ_names)}")
            table[row, pairs[:, 0]] = pairs[:, 1]
        check_mapping_codes(s)
        return table

    @property
    def organs(self) -> pd.DataFrame:
        """Every non-empty organ row with every field (:meth:`organ_rows`)."""
        return self.organ_rows()

    def meta_values(self, key: str) -> np.ndarray:
        """A metadata field's values, one per case in :meth:`ordered_case_ids` order (None where absent)."""
        self._prefetch([], [key])
        column = np.full(sum(s.cases for s in self.segments), None, dtype=object)
        offset = 0
        for s in self.segments:
            positions, values = s.meta_column(key)
            column[offset + positions] = np.fromiter(values, dtype=object, count=len(values))
            offset += s.cases
        return column

    def meta_frame(self, keys: Sequence[str] | None = None) -> pd.DataFrame:
        """Metadata fields, one row per case, indexed by case id (any key name is safe).

        ``keys``: those fields (only their blobs are read); default: every field with a scalar value."""
        import pandas as pd  # tables only: queries import no pandas

        self._prefetch(["case_id"], self.meta_keys if keys is None else keys)  # one round of reads
        columns: dict[str, list[Any]] = {}
        for key in self.meta_keys if keys is None else keys:
            values = self.meta_values(key).tolist()  # pandas infers the column's type from Python values
            if keys is not None or any(v is not None and not isinstance(v, (dict, list)) for v in values):
                columns[key] = values
        return pd.DataFrame(columns, index=pd.Index(self.ordered_case_ids(), name="case_id", dtype=object))

    def stats_frame(
        self,
        fields: Sequence[str] = ORGAN_FIELDS,
        meta: Sequence[str] | None = None,
        organs: Sequence[str] | None = None,
        include_empty: bool = False,
    ) -> pd.DataFrame:
        """:meth:`organ_rows`, then the case's metadata ``meta`` (default: every scalar field).

        Metadata keys that clash with a statistics column are prefixed ``meta.``."""
        frame = self.organ_rows(fields, organs, include_empty)
        table = self.meta_frame(meta)
        table = table.reindex(frame["case_id"].cat.categories)
        rows = frame["case_id"].cat.codes.to_numpy()
        for column in table.columns:  # a take per column: cheaper than a join on 250k rows
            frame[meta_column_name(column)] = table[column].to_numpy()[rows]
        return frame

    # -- comparing --------------------------------------------------------------------
    def entries(self) -> dict[str, tuple[Any, ...]]:
        """Each case's entry, comparable: token, metadata, mapping and its organ rows."""
        rows = self.organ_rows()
        by_case: dict[str, list[tuple[Any, ...]]] = {}
        for record in rows.astype({"case_id": object, "organ": object}).itertuples(index=False):
            by_case.setdefault(record[0], []).append(tuple(record[1:]))
        mappings = self.mappings()
        return {
            case_id: (token, json.dumps(meta, sort_keys=True), mappings[case_id], by_case.get(case_id, []))
            for case_id, token, meta in self.cases.itertuples(index=False)
        }

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArchiveIndex):
            return NotImplemented
        return self.entries() == other.entries()

    __hash__ = None  # type: ignore[assignment]
