"""The archive index: per-case, per-organ statistics and case metadata in one blob.

Stored as one uncompressed ``.npz`` of numeric and fixed-width text columns
(loaded with ``allow_pickle=False``), so a 10,000-case index is one read and
becomes a DataFrame without per-row Python work. Each case carries the
backend's version token of the stored case; readers reconcile the stored index
with the cases actually present (:meth:`ArchiveIndex.reconcile`), so an index
written before another process added a case is completed on read, never short.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable, Iterable

import numpy as np
import pandas as pd

from medmask_store.model.attributes import CaseInfo

AXES = ("i", "j", "k")
ORGAN_FIELDS = (
    "value", "voxels", "volume_ml",
    *(f"bbox_{a}{end}" for a in AXES for end in ("0", "1")),
    *(f"centroid_{a}" for a in AXES),
    "centroid_x_mm", "centroid_y_mm", "centroid_z_mm",
    "touches_border",
)  # fmt: skip
INTEGER_FIELDS = ("value", "voxels")
CASE_COLUMNS = ("case_id", "token", "meta")


def organ_rows(info: CaseInfo) -> list[tuple[object, ...]]:
    """Index rows of one case: every organ of its mapping, empty ones with zero voxels."""
    rows = []
    for organ, value in info.mapping.items():
        s = info.stats[organ]
        bbox = [float(v) for pair in s.bbox for v in pair] if s.bbox else [np.nan] * 6
        centroid = list(s.centroid_voxel) if s.centroid_voxel else [np.nan] * 3
        centroid_mm = list(s.centroid_mm) if s.centroid_mm else [np.nan] * 3
        rows.append((info.case_id, organ, value, s.voxels, s.volume_ml, *bbox, *centroid, *centroid_mm, s.touches_border))
    return rows


class ArchiveIndex:
    """Organ rows (``organs``) and one row per case (``cases``: token and metadata JSON)."""

    def __init__(self, organs: pd.DataFrame, cases: pd.DataFrame) -> None:
        self.organs = organs
        self.cases = cases

    @classmethod
    def from_cases(cls, cases: Iterable[tuple[CaseInfo, str]]) -> ArchiveIndex:
        """Build from stored cases and their version tokens."""
        infos = list(cases)
        rows = [row for info, _ in infos for row in organ_rows(info)]
        organs = pd.DataFrame(rows, columns=["case_id", "organ", *ORGAN_FIELDS])
        case_rows = [(info.case_id, token, json.dumps(info.meta)) for info, token in infos]
        return cls(_typed(organs), pd.DataFrame(case_rows, columns=list(CASE_COLUMNS)))

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ArchiveIndex):
            return NotImplemented
        mine, theirs = self._sorted(), other._sorted()
        return mine.cases.equals(theirs.cases) and mine.organs.equals(theirs.organs)

    def _sorted(self) -> ArchiveIndex:
        organs = self.organs.astype({"case_id": str, "organ": str}).sort_values(["case_id", "organ"])
        cases = self.cases.sort_values("case_id")
        return ArchiveIndex(organs.reset_index(drop=True), cases.reset_index(drop=True))

    @property
    def case_ids(self) -> list[str]:
        return sorted(self.cases["case_id"].tolist())

    def tokens(self) -> dict[str, str]:
        return dict(zip(self.cases["case_id"], self.cases["token"]))

    # -- consistency -------------------------------------------------------------
    def reconcile(self, live_tokens: dict[str, str], read_info: Callable[[str], CaseInfo]) -> bool:
        """Drop cases that are gone, (re)read cases that are new or changed; return whether any was."""
        known = self.tokens()
        stale = {c for c, token in known.items() if live_tokens.get(c) != token}
        fresh = [(read_info(c), token) for c, token in live_tokens.items() if known.get(c) != token]
        if not stale and not fresh:
            return False
        self.replace(stale, fresh)
        return True

    def replace(self, removed: set[str], added: list[tuple[CaseInfo, str]]) -> None:
        """Remove cases and add (or re-add) others."""
        removed = removed | {info.case_id for info, _ in added}
        keep_organs = self.organs[~self.organs["case_id"].astype(str).isin(removed)]
        keep_cases = self.cases[~self.cases["case_id"].isin(removed)]
        new = ArchiveIndex.from_cases(added)
        self.organs = _typed(pd.concat([keep_organs.astype({"case_id": str, "organ": str}), new.organs.astype(
            {"case_id": str, "organ": str})], ignore_index=True))
        self.cases = pd.concat([keep_cases, new.cases], ignore_index=True)

    # -- serialization ----------------------------------------------------------
    def to_bytes(self) -> bytes:
        case_codes = pd.Categorical(self.organs["case_id"].astype(str))
        organ_codes = pd.Categorical(self.organs["organ"].astype(str))
        buffer = io.BytesIO()
        np.savez(
            buffer,
            case_ids=np.asarray(self.cases["case_id"], dtype=str),
            tokens=np.asarray(self.cases["token"], dtype=str),
            meta=np.asarray(self.cases["meta"], dtype=str),
            row_case_names=np.asarray(case_codes.categories, dtype=str),
            row_case=case_codes.codes.astype(np.int32),
            organ_names=np.asarray(organ_codes.categories, dtype=str),
            row_organ=organ_codes.codes.astype(np.int32),
            numbers=self.organs[list(ORGAN_FIELDS)].to_numpy(dtype=np.float64),
        )
        return buffer.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> ArchiveIndex:
        with np.load(io.BytesIO(data), allow_pickle=False) as stored:
            c = {key: stored[key] for key in stored.files}
        organs = pd.DataFrame(c["numbers"].reshape(-1, len(ORGAN_FIELDS)), columns=list(ORGAN_FIELDS))
        organs.insert(0, "case_id", pd.Categorical.from_codes(c["row_case"], c["row_case_names"]))
        organs.insert(1, "organ", pd.Categorical.from_codes(c["row_organ"], c["organ_names"]))
        cases = pd.DataFrame({"case_id": c["case_ids"], "token": c["tokens"], "meta": c["meta"]}).astype(str)
        return cls(_typed(organs), cases)

    # -- tables -----------------------------------------------------------------
    def meta_frame(self) -> pd.DataFrame:
        """One row per case: its scalar metadata fields."""
        records = [
            {"case_id": case_id, **{k: v for k, v in json.loads(meta).items() if not isinstance(v, (dict, list))}}
            for case_id, meta in zip(self.cases["case_id"], self.cases["meta"])
        ]
        return pd.DataFrame(records, columns=None if records else ["case_id"])

    def stats_frame(self) -> pd.DataFrame:
        """One row per case × organ: organ statistics, then the case's scalar metadata."""
        organs = self.organs.astype({"case_id": str, "organ": str}).sort_values(["case_id", "organ"])
        meta = self.meta_frame()
        frame = organs.merge(meta, on="case_id", how="left") if len(meta.columns) > 1 else organs
        return frame.reset_index(drop=True)


def _typed(organs: pd.DataFrame) -> pd.DataFrame:
    return organs.astype({**{f: "int64" for f in INTEGER_FIELDS}, "touches_border": bool})
