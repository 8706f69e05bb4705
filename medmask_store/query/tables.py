"""Tables of the archive index: statistics (long or one row per case), chosen columns, the organ census.

Long tables have one row per case × organ (``case_id``, ``organ``, statistics, then the case's
metadata); wide tables one row per case (``case_id``, an ``organ.field`` column per organ and
statistic, then the metadata). Empty organs (no voxels) are left out unless ``include_empty``: in a
wide table their cells are missing. Counts and bounding boxes stay integers (pandas ``Int64`` where
a cell can be missing), never ``107.0``.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import pandas as pd

from medmask_store.errors import InvalidQuery, OrganNotFound
from medmask_store.query.index import INTEGER_FIELDS, ORGAN_FIELDS, ArchiveIndex, meta_column_name

ROW_KEYS = ("case_id", "organ")
WHOLE_NUMBER_FIELDS = (*INTEGER_FIELDS, *(f for f in ORGAN_FIELDS if f.startswith("bbox_")))
PERCENTILES = (5, 50, 95)


def _suggest(name: str, choices: Sequence[str]) -> str:
    close = difflib.get_close_matches(name, list(choices), n=3)
    return f" (did you mean {', '.join(close)}?)" if close else ""


def _whole_numbers(table: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """``columns`` as int64, or as nullable Int64 where a cell is missing."""
    return table.astype({column: "Int64" if table[column].isna().any() else "int64" for column in columns})


def _organ_names(index: ArchiveIndex, organs: Sequence[str] | None) -> list[str]:
    """The organs asked for (each checked to exist in some case), or every organ of any case."""
    known = index.present_organs()
    if organs is None:
        return known
    for organ in organs:
        if organ not in known:
            raise OrganNotFound(f"no case has an organ {organ!r}{_suggest(organ, known)}")
    return list(dict.fromkeys(organs))


def _meta_names(index: ArchiveIndex) -> dict[str, str]:
    """Metadata keys by their column name in the tables: ``meta.<key>`` where a key clashes with a statistic."""
    return {meta_column_name(key): key for key in index.meta_keys}


def _split_fields(index: ArchiveIndex, fields: Sequence[str] | None) -> tuple[list[str], list[str] | None]:
    """``fields`` as (organ statistics, metadata columns), each checked; None means all of both."""
    meta = list(_meta_names(index))
    if fields is None:
        return list(ORGAN_FIELDS), None
    for name in fields:
        if name not in ORGAN_FIELDS and name not in meta:
            raise InvalidQuery(
                f"unknown field {name!r}{_suggest(name, [*ORGAN_FIELDS, *meta])}; organ fields: "
                f"{', '.join(ORGAN_FIELDS)}; metadata fields: {', '.join(meta) or 'none'}"
            )
    return [f for f in ORGAN_FIELDS if f in fields], [f for f in meta if f in fields]


def stats_table(
    index: ArchiveIndex,
    organs: Sequence[str] | None = None,
    fields: Sequence[str] | None = None,
    wide: bool = False,
    include_empty: bool = False,
    cases: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Statistics of ``organs`` (default: all) and ``fields`` (organ statistics and metadata names; default: all).

    ``cases`` keeps only those case ids. Long (default): one row per case × organ, sorted by case and organ.
    ``wide``: one row per case with ``organ.field`` columns, then the metadata; an organ asked for has its
    columns even where no case holds it. Only the index columns of the fields asked for are read.
    """
    names = _organ_names(index, organs)
    organ_fields, meta_columns = _split_fields(index, fields)
    keys = None if meta_columns is None else [_meta_names(index)[c] for c in meta_columns]
    if wide:
        rows = index.organ_rows(organ_fields, names if organs is not None else None, include_empty)
    else:
        rows = index.stats_frame(organ_fields, keys, names if organs is not None else None, include_empty)
    if cases is not None:
        rows = rows[rows["case_id"].isin(cases)]
    if not wide:
        meta_fields = [c for c in rows.columns if c not in (*ROW_KEYS, *organ_fields)]
        long = rows[[*ROW_KEYS, *organ_fields, *meta_fields]].reset_index(drop=True)
        long[list(ROW_KEYS)] = long[list(ROW_KEYS)].astype(object)
        return _whole_numbers(long, [f for f in organ_fields if f in WHOLE_NUMBER_FIELDS])
    chosen = None if cases is None else set(cases)
    ids = [c for c in index.case_ids if chosen is None or c in chosen]
    return _wide(rows, ids, names if organs is not None else _present(rows), organ_fields, _metadata(index, keys))


def _present(rows: pd.DataFrame) -> list[str]:
    return sorted({str(o) for o in rows["organ"]})


def _wide(rows: pd.DataFrame, ids: list[str], organs: list[str], fields: list[str], meta: pd.DataFrame) -> pd.DataFrame:
    """One row per case of ``ids``: ``organ.field`` columns, then the metadata columns ``meta``."""
    keys = rows[list(ROW_KEYS)].astype(object)
    stacked = rows[fields].set_index([keys["case_id"], keys["organ"]])
    # one unstack for all organs: a join per organ fragments the frame (117 organs x 20 columns)
    table = stacked.unstack("organ").swaplevel(axis=1)
    table = table.reindex(
        index=pd.Index(ids, name="case_id", dtype=object), columns=pd.MultiIndex.from_product([organs, fields])
    )
    table.columns = [f"{organ}.{field}" for organ, field in table.columns]
    whole = [c for c in table.columns if c.rpartition(".")[2] in WHOLE_NUMBER_FIELDS]
    flags = {c: "boolean" for c in table.columns if c.rpartition(".")[2] == "touches_border"}
    table = _whole_numbers(table.astype(flags), whole)
    return table.join(meta.reindex(table.index)).copy().reset_index()  # copy: one block per dtype


def _metadata(index: ArchiveIndex, keys: Sequence[str] | None = None) -> pd.DataFrame:
    """The metadata ``keys`` (default: every scalar field) by case, named as in the statistics tables."""
    meta = index.meta_frame(keys)
    return meta.rename(columns=meta_column_name)


def columns_table(
    index: ArchiveIndex, cases: Sequence[str], columns: Sequence[str], include_empty: bool = False
) -> pd.DataFrame:
    """One row per case of ``cases``: ``case_id`` and ``columns``, each ``organ.field`` or a metadata field."""
    meta = list(_meta_names(index))
    organs, fields, meta_fields = [], [], []
    for column in columns:
        if column in meta:
            meta_fields.append(column)
            continue
        organ, dot, field = column.rpartition(".")
        if not dot:
            raise InvalidQuery(
                f"unknown column {column!r}{_suggest(column, meta)}: write organ.field (e.g. liver.volume_ml) "
                f"or a metadata field ({', '.join(meta) or 'none'})"
            )
        if field not in ORGAN_FIELDS:
            raise InvalidQuery(
                f"unknown organ field {field!r} in {column!r}{_suggest(field, ORGAN_FIELDS)}; fields: {', '.join(ORGAN_FIELDS)}"
            )
        organs.append(organ)
        fields.append(field)
    table = stats_table(
        index, organs=organs, fields=[*dict.fromkeys(fields), *meta_fields], wide=True,
        include_empty=include_empty, cases=cases,
    )  # fmt: skip
    return table[["case_id", *columns]]


def organ_census(index: ArchiveIndex, percentiles: Sequence[float] = PERCENTILES) -> pd.DataFrame:
    """One row per organ of any case: ``cases`` holding it with voxels, and ``volume_ml_p<q>`` over those cases."""
    present = index.organ_rows(["volume_ml"]).astype({"organ": object})
    volumes = present.groupby("organ")["volume_ml"]
    census = pd.DataFrame(index=pd.Index(index.present_organs(), name="organ", dtype=object))
    census["cases"] = volumes.size().reindex(census.index, fill_value=0).astype("int64")
    for q in percentiles:
        census[f"volume_ml_p{q:g}"] = volumes.quantile(q / 100).reindex(census.index).round(3)
    return census.reset_index()
