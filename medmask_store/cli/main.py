"""``medmask-store`` commands; each parses arguments, calls the library and prints."""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Iterable
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from medmask_store.cli.messages import in_cli_words
from medmask_store.errors import CaseNotFound, InvalidCase, MaskStoreError

# Each command imports what it uses (NumPy, nibabel, the archive, ...): `--help` and `ls` start fast.
if TYPE_CHECKING:
    import pandas as pd

    from medmask_store.ingest import CaseOutcome
    from medmask_store.model.case_data import Unmapped
    from medmask_store.storage.case import Case


# Other names a command answers to (not listed in the help; its summary names them).
ALIASES = {"delete": "rm"}


class MaskStoreGroup(click.Group):
    """Turns library errors into one-line messages (in the CLI's words) and exit code 1, and warnings into
    one-line notes."""

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return super().get_command(ctx, ALIASES.get(cmd_name, cmd_name))

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """Each command with its help's whole first paragraph, wrapped: click's own summary stops at the
        first period ("e.g.") and is cut at the terminal's width."""
        commands = (self.get_command(ctx, name) for name in self.list_commands(ctx))
        rows = [(command.name or "", _summary(command)) for command in commands if command and not command.hidden]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        # No command does linear algebra worth threads, and OpenBLAS starting one per core when NumPy
        # loads costs ~90 ms of start-up on a busy 2-core machine. A value the user set is kept.
        os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            try:
                return super().invoke(ctx)
            except MaskStoreError as exc:
                raise click.ClickException(f"{type(exc).__name__}: {in_cli_words(str(exc))}") from exc


def _summary(command: click.Command) -> str:
    return command.short_help or " ".join((command.help or "").partition("\n\n")[0].split())


def _show_warning(message: Warning | str, category: type[Warning], *_: object, **__: object) -> None:
    click.echo(f"warning: {in_cli_words(str(message))}", err=True)


SKIP_DAMAGED_OPTION = click.option(
    "--skip-damaged", is_flag=True,
    help="Leave out damaged cases (and rebuild a damaged index in memory), with a warning each, instead of failing.",
)


QUIET_OPTION = click.option("--quiet", "-q", is_flag=True, help="No progress bar.")
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print JSON (its shape: README, Queries across cases).")
CSV_OPTION = click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
INCLUDE_EMPTY_OPTION = click.option("--include-empty", is_flag=True, help="Keep organs without voxels (left out by default).")


def print_table(table: pd.DataFrame, as_csv: bool, as_json: bool) -> None:
    """A table as JSON records (a missing value is null), CSV, or aligned text (nothing when it has no rows)."""
    if as_csv and as_json:
        raise click.UsageError("pass --csv or --json, not both")
    if as_json:
        click.echo(table.to_json(orient="records"))
    elif as_csv:
        click.echo(table.to_csv(index=False), nl=False)
    elif len(table):
        click.echo(table.to_string(index=False))


def comma_list(text: str | None) -> list[str] | None:
    """``a,b`` as ``["a", "b"]`` (None stays None)."""
    return None if text is None else [item.strip() for item in text.split(",") if item.strip()]


def progress_bar(desc: str, unit: str, quiet: bool) -> Callable[[Iterable[Any]], Iterable[Any]]:
    """What wraps an iterable in a tqdm progress bar on stderr: none with ``--quiet`` or when stderr is no terminal."""
    from tqdm import tqdm

    return partial(tqdm, desc=desc, unit=unit, disable=quiet or not sys.stderr.isatty())


class ArchiveLocation(click.ParamType):
    """An archive's local path (a Path; ``exists``: it must exist) or its URL (kept as given: s3://, https://...).

    Object stores take their credentials and endpoint from the standard environment
    variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL, AWS_REGION).
    """

    name = "archive"

    def __init__(self, exists: bool) -> None:
        self.exists = exists

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | Path:
        if isinstance(value, Path) or "://" in str(value):
            return value
        if self.exists and not os.path.exists(value):
            self.fail(f"{value!r} does not exist", param, ctx)
        return Path(value)


ARCHIVE = ArchiveLocation(exists=True)
NEW_ARCHIVE = ArchiveLocation(exists=False)


class LabelSourceType(click.ParamType):
    """A built-in label table's name, kept as given, or an existing file, as a Path."""

    name = "labels"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str | Path:
        from medmask_store.io.labels import BUILTIN_TABLES

        if value in BUILTIN_TABLES or isinstance(value, Path):
            return value
        if not Path(value).is_file():
            self.fail(f"{value!r} is neither a file nor a built-in table ({', '.join(BUILTIN_TABLES)})", param, ctx)
        return Path(value)


# The names of storage.layout.PRESETS, written out so that the module imports no NumPy (a test checks).
PRESET_OPTION = click.option(
    "--preset", type=click.Choice(["default", "compact"]), default="default", show_default=True,
    help="How new cases are stored: default (label volumes plain Zstd, read by any Zarr/HDF5 reader) "
    "or compact (Crackle+Zstd label volumes, ~20% smaller, need medmask_store to read).",
)


@click.group(cls=MaskStoreGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="medmask_store")
def main() -> None:
    """Store segmentation masks losslessly in chunked Zarr v3 / HDF5 archives."""


@main.command("import")
@click.argument("archive", type=NEW_ARCHIVE)
@click.argument("sources", nargs=-1, required=True, type=click.Path(exists=True, path_type=Path))
@click.option(
    "--labels", type=LabelSourceType(), metavar="FILE|totalsegmentator",
    help="Label table: organ values (and colours) for multi-label files and mask folders. A JSON map "
    '{"liver": 5, ...}, a text file (line n names value n), a NIfTI file with a label table in its header, '
    "or totalsegmentator (its 117 classes). Default for a multi-label file: <stem>.json beside it, else its "
    "header's table; for a folder: values 1, 2, ... in file-name order.",
)
@click.option("--case", "case_id", help="Case id (only with a single case; default: folder or file stem).")
@click.option("--meta", help='Case metadata as JSON, e.g. \'{"age": 61}\' (only with a single case).')
@click.option("--name-unmapped", is_flag=True, help="Name labels missing from the label map label_<value>; number mask files the --labels table lacks above its values.")
@click.option("--skip-existing/--overwrite", default=True, show_default=True,
              help="Skip cases already in the archive (a damaged one is replaced), or replace them.")
@click.option("--jobs", "-j", type=click.IntRange(min=1), help="Worker processes [default: the machine's cores].")
@click.option("--dry-run", is_flag=True, help="List what would be imported, skipped or replaced; change nothing.")
@click.option("--progress/--no-progress", default=None,
              help="Show a progress bar (cases/s, ETA) [default: when stderr is a terminal].")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar and no line per case; only failures and the summary.")
@click.option("--commit-every", default=50, show_default=True,
              help="Single-file archives (.h5, .zarr.zip, .msk): publish after this many cases.")
@click.option("--scheduler", metavar="ADDRESS",
              help="Read and encode the cases on the workers of this Dask scheduler (e.g. tcp://host:8786) instead of "
              "local processes; they must reach the sources (and a .zarr archive) at the same paths.")
@PRESET_OPTION
@click.option("--json", "as_json", is_flag=True,
              help="Print the summary (with --dry-run: the plan) as JSON, and no line per case.")
def import_command(
    archive: Path | str, sources: tuple[Path, ...], labels: Path | str | None, case_id: str | None, meta: str | None,
    name_unmapped: bool, skip_existing: bool, jobs: int | None, dry_run: bool, progress: bool | None, quiet: bool,
    commit_every: int, scheduler: str | None, preset: str, as_json: bool,
) -> None:
    """Import case folders, multi-label NIfTI files or folders of case folders, in parallel.

    Re-running an import resumes it: cases already in the archive are skipped.
    A bad case is reported with its file and reason and the others go on; the
    run ends with a summary and exit code 1 if any case failed. Directory
    archives (.zarr) commit every case as it is written; single-file archives
    publish every --commit-every cases and at the end (a killed import keeps
    everything published before).
    """
    import shutil

    from tqdm import tqdm

    from medmask_store.cluster.client import connect
    from medmask_store.concurrency import keep_freed_memory
    from medmask_store.ingest import import_cases, plan_import
    from medmask_store.io.labels import load_labels
    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.layout import StorageSettings

    if scheduler and jobs:
        raise click.UsageError("--jobs sets local processes, --scheduler a cluster's workers: pass one of them")
    if scheduler:  # workers elsewhere resolve relative paths from their own working directory
        archive = archive.absolute() if isinstance(archive, Path) else archive
        sources = tuple(source.absolute() for source in sources)
    label_map = load_labels(labels) if labels else None
    unmapped: Unmapped = "name" if name_unmapped else "error"
    user_meta = _parse_meta(meta)
    existed = _archive_exists(archive)
    with MaskArchive(archive) if existed else nullcontext() as current:  # bad sources fail before any write
        plan = plan_import(current, sources, label_map, unmapped, overwrite=not skip_existing)
        if (case_id or user_meta) and len(plan.cases) != 1:
            raise click.UsageError(f"--case and --meta need exactly one case, the sources hold {len(plan.cases)}")
        if case_id:
            plan = plan_import(current, sources, label_map, unmapped, overwrite=not skip_existing, case_id=case_id)
    if dry_run and as_json:
        click.echo(json.dumps([
            {"case_id": case.case_id, "action": case.action, "source": str(case.source.path), "reason": case.reason or None}
            for case in plan.cases
        ]))  # fmt: skip
        return
    if dry_run:
        for case in plan.cases:
            click.echo(f"{case.action:8} {case.case_id}  {case.source.path}" + (f"  ({case.reason})" if case.reason else ""))
        click.echo(f"would import {len(plan.to_import)}, skip {len(plan.cases) - len(plan.to_import)}")
        return
    single = len(plan.cases) == 1
    show_bar = not quiet and not single and (progress if progress is not None else sys.stderr.isatty())
    with connect(scheduler) as client, MaskArchive(archive, "a", StorageSettings.preset(preset)) as store, \
            tqdm(total=len(plan.cases), desc="import", unit="case", disable=not show_bar, smoothing=0.1) as bar:

        def on_outcome(outcome: CaseOutcome) -> None:
            bar.update()
            if not quiet and not single and not as_json:
                tqdm.write(f"{outcome.status:8} {outcome.case_id}  {outcome.path}  "
                           + (in_cli_words(outcome.detail) if outcome.status == "failed" else f"({outcome.seconds:.1f} s)"))

        keep_freed_memory()  # this process exits after the import
        report = import_cases(store, plan, jobs, user_meta, commit_every, on_outcome, client)
    if not existed and not report.imported and isinstance(archive, Path):  # a failed first import leaves no empty archive
        shutil.rmtree(archive) if archive.is_dir() else archive.unlink()
    if single and report.failed:  # one case: its error, on one line
        raise click.ClickException(in_cli_words(next(iter(report.failed.values()))))
    if as_json:
        summary = {"archive": str(archive), "imported": report.imported, "skipped": report.skipped,
                   "failed": report.failed, "seconds": round(report.seconds, 3), "jobs": report.jobs}  # fmt: skip
        click.echo(json.dumps(summary))
    else:
        click.echo(report.summary() + f" into {archive}")
    if report.failed:
        click.echo(f"{len(report.failed)} case(s) failed:", err=True)
        for failed_id, reason in report.failed.items():
            click.echo(f"  {failed_id}: {in_cli_words(reason)}", err=True)
        sys.exit(1)


def _archive_exists(archive: Path | str) -> bool:
    """Whether a local path exists, or a URL names an archive."""
    from medmask_store.errors import InvalidArchive
    from medmask_store.storage.archive import MaskArchive

    if isinstance(archive, Path):
        return archive.exists()
    try:
        with MaskArchive(archive) as opened:
            opened.case_ids()  # an archive in an object store is read when first used
    except InvalidArchive:
        return False
    return True


def _parse_meta(meta: str | None) -> dict[str, Any]:
    from medmask_store.model.validation import validate_meta

    if meta is None:
        return {}
    try:
        return validate_meta(json.loads(meta))
    except (ValueError, InvalidCase) as exc:
        raise click.BadParameter(f"not a JSON object: {exc}", param_hint="--meta") from exc


@main.command("ls")
@click.argument("archive", type=ARCHIVE)
@JSON_OPTION
def ls_command(archive: Path | str, as_json: bool) -> None:
    """List the case ids of an archive."""
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive) as store:
        case_ids = store.case_ids()
    click.echo(json.dumps(case_ids) if as_json else "\n".join(case_ids), nl=as_json or bool(case_ids))


def case_summary(case: Case) -> dict[str, Any]:
    """A JSON-ready description of a case and its organs (colours as RGBA, 0..255)."""
    colors = case.colors
    return {
        "case_id": case.case_id,
        "space": json.loads(case.space.to_json()),
        "meta": case.meta,
        "organs": {
            name: {
                "value": value, "color": list(colors[name]), "representation": case.representation(name),
                **case.stats[name].to_json(),
            }
            for name, value in case.mapping.items()
        },
    }


@main.command("rm")
@click.argument("archive", type=ARCHIVE)
@click.argument("case_ids", metavar="CASE...", nargs=-1, required=True)
def rm_command(archive: Path | str, case_ids: tuple[str, ...]) -> None:
    """Delete cases (a damaged one too: its files go, whatever state they are in); also named delete."""
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive, "r+") as store:
        case_ids = tuple(dict.fromkeys(case_ids))
        missing = [case_id for case_id in case_ids if case_id not in store]
        if missing:  # checked first: a failed command deletes nothing
            raise CaseNotFound(f"no case {', '.join(map(repr, missing))} in {archive}; nothing was deleted")
        with store.batch():
            for case_id in case_ids:
                store.delete_case(case_id)
    click.echo(f"deleted {len(case_ids)} case(s) from {archive}")


@main.command("mv")
@click.argument("archive", type=ARCHIVE)
@click.argument("case_id", metavar="OLD")
@click.argument("new_id", metavar="NEW")
def mv_command(archive: Path | str, case_id: str, new_id: str) -> None:
    """Rename a case, its stored bytes unchanged; NEW must not exist."""
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive, "r+") as store:
        store.rename_case(case_id, new_id)
    click.echo(f"renamed case {case_id} to {new_id} in {archive}")


@main.command("info")
@click.argument("archive", type=ARCHIVE)
@click.argument("case_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--nonempty", is_flag=True, help="Only organs with voxels.")
@click.option("--organ", "organs", multiple=True, help="Only this organ (repeat for several).")
def info_command(archive: Path | str, case_id: str, as_json: bool, nonempty: bool, organs: tuple[str, ...]) -> None:
    """Describe one case: geometry, metadata and per-organ statistics."""
    from medmask_store.errors import OrganNotFound
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive) as store:
        summary = case_summary(store[case_id])
    unknown = [name for name in organs if name not in summary["organs"]]
    if unknown:
        raise OrganNotFound(f"case {case_id!r} in {archive} has no organ {', '.join(map(repr, unknown))}")
    summary["organs"] = {
        name: organ for name, organ in summary["organs"].items()
        if (not organs or name in organs) and (not nonempty or organ["voxels"])
    }  # fmt: skip
    if as_json:
        click.echo(json.dumps(summary, indent=1))
        return
    space = summary["space"]
    click.echo(f"case {case_id}: shape {space['shape']}, spacing {space['spacing']} mm, meta {summary['meta']}")
    click.echo(f"{'organ':32} {'value':>5} {'voxels':>10} {'mL':>10}  representation")
    for name, organ in summary["organs"].items():
        click.echo(f"{name:32} {organ['value']:>5} {organ['voxels']:>10} {organ['volume_ml']:>10.2f}  {organ['representation']}")


# The names of io.formats.EXPORT_FORMATS, written out so that `--help` imports no NumPy.
EXPORT_FORMAT_NAMES = ("nifti", "multilabel", "seg.nrrd", "dicom-seg", "ome-zarr")


@main.command("export")
@click.argument("archive", type=ARCHIVE)
@click.argument("case_id")
@click.argument("out", type=click.Path(path_type=Path))
@click.option("--format", "export_format", type=click.Choice(EXPORT_FORMAT_NAMES),
              help="nifti: OUT/<organ>.nii.gz per organ; multilabel: one .nii.gz + .json label map; seg.nrrd: "
              "3D Slicer; dicom-seg: DICOM SEG (needs --ct-series); ome-zarr: OME-Zarr image + labels. "
              "[default: from OUT's name (.nii.gz, .seg.nrrd, .dcm, .ome.zarr), else nifti]")
@click.option("--multilabel", is_flag=True, help="Same as --format multilabel.")
@click.option("--ome-zarr", "ome_zarr", is_flag=True, help="Same as --format ome-zarr.")
@click.option("--ct-series", type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="dicom-seg: the folder of the CT series the segmentation refers to.")
@click.option("--allow-overlap", is_flag=True, help="multilabel: paint overlapping organs over their neighbours.")
@click.option("--organs", metavar="A,B,...", help="Export these organs only (comma-separated).")
@QUIET_OPTION
def export_command(
    archive: Path | str, case_id: str, out: Path, export_format: str | None, multilabel: bool, ome_zarr: bool,
    ct_series: Path | None, allow_overlap: bool, organs: str | None, quiet: bool,
) -> None:
    """Export a case: NIfTI (a file per organ, or one multi-label file), 3D Slicer .seg.nrrd, DICOM SEG or OME-Zarr.

    For the single-file formats OUT is the file, or a folder to write <case><suffix> in.
    """
    from medmask_store.io.formats import export_case
    from medmask_store.storage.archive import MaskArchive

    chosen = {name for name in (export_format, multilabel and "multilabel", ome_zarr and "ome-zarr") if name}
    if len(chosen) > 1:
        raise click.UsageError(f"choose one format, got {', '.join(sorted(chosen))}")
    with MaskArchive(archive) as store:
        fmt = next(iter(chosen), None)
        written = export_case(
            store[case_id], out, fmt, ct_series=ct_series, allow_overlap=allow_overlap,  # type: ignore[arg-type]
            organs=organs.split(",") if organs is not None else None, progress=progress_bar("export", "organ", quiet),
        )  # fmt: skip
    click.echo(f"wrote {len(written)} file(s) to {out}")


@main.command("preview")
@click.argument("archive", type=ARCHIVE)
@click.argument("case_id")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The PNG to write.")
@click.option("--organ", "organs", multiple=True,
              help="Draw this organ (repeat for several), the slices through their centroid "
              "[default: every organ, through the volume centre].")
def preview_command(archive: Path | str, case_id: str, out: Path, organs: tuple[str, ...]) -> None:
    """Write a PNG of three orthogonal slices, organs in their colours, with a legend; reads only those slices."""
    from medmask_store.preview import render_preview
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive) as store:
        render_preview(store[case_id], list(organs) or None, out)
    click.echo(f"wrote {out}")


def _parse_box(text: str, option: str, kind: type) -> list[tuple[Any, Any]]:
    """``a0:a1,b0:b1,c0:c1`` as three (start, stop) pairs."""
    try:
        pairs = [tuple(kind(v) for v in part.split(":")) for part in text.split(",")]
    except ValueError as exc:
        raise click.BadParameter(f"expected a0:a1,b0:b1,c0:c1, got {text!r}", param_hint=option) from exc
    if len(pairs) != 3 or any(len(p) != 2 for p in pairs):
        raise click.BadParameter(f"expected three start:stop ranges, got {text!r}", param_hint=option)
    return pairs  # type: ignore[return-value]


def _read_region(options: dict[str, str | None]) -> Any:
    """The region the one region option given describes (voxel pairs or a WorldBox), or None for the whole volume."""
    from medmask_store.model.region import WorldBox

    given = {option: text for option, text in options.items() if text}
    if len(given) > 1:
        raise click.UsageError(
            f"pass one of --region (voxels), --mm-lps or --mm-ras (millimetres), not {' and '.join(given)}"
        )
    if not given:
        return None
    [(option, text)] = given.items()
    if option == "--region":
        return _parse_box(text, option, int)
    if option == "--mm":
        click.echo("warning: --mm is deprecated; it is --mm-lps (LPS millimetres); for nibabel's RAS pass --mm-ras", err=True)
    lo, hi = zip(*_parse_box(text, option, float))
    return WorldBox.from_ras(lo, hi) if option == "--mm-ras" else WorldBox(lo, hi)  # type: ignore[arg-type]


@main.command("read")
@click.argument("archive", type=ARCHIVE)
@click.argument("case_id")
@click.option("--organ", help="Read one organ (cropped to its bounding box unless a region is given).")
@click.option("--region", help="Voxel box i0:i1,j0:j1,k0:k1 in array axis order (as nibabel's).")
@click.option("--mm-lps", help="World box x0:x1,y0:y1,z0:z1 in LPS millimetres (DICOM, ITK, Slicer; the Space's "
              "frame): the voxels whose centres lie inside.")  # fmt: skip
@click.option("--mm-ras", help="World box x0:x1,y0:y1,z0:z1 in RAS millimetres (NIfTI, nibabel: LPS with x and y "
              "negated).")  # fmt: skip
@click.option("--mm", "mm_old", help="Deprecated: the old name of --mm-lps (LPS millimetres).")
@click.option("--out", "out_path", required=True, type=click.Path(path_type=Path), help="Output .npy, .nii or .nii.gz.")
def read_command(
    archive: Path | str, case_id: str, organ: str | None, region: str | None, mm_lps: str | None, mm_ras: str | None,
    mm_old: str | None, out_path: Path,
) -> None:  # fmt: skip
    """Read labels or one organ, whole or a region, into a .npy or NIfTI file (with the region's affine)."""
    import nibabel as nib
    import numpy as np

    from medmask_store.model.geometry import nifti_affine
    from medmask_store.storage.archive import MaskArchive

    box = _read_region({"--region": region, "--mm-lps": mm_lps, "--mm-ras": mm_ras, "--mm": mm_old})
    if not out_path.name.endswith((".npy", ".nii", ".nii.gz")):
        raise click.BadParameter("the output must end in .npy, .nii or .nii.gz", param_hint="--out")
    with MaskArchive(archive) as store:
        case = store[case_id]
        if organ and box is None:
            data, space = case.read_organ(organ, crop=True)
        elif organ:
            data, space = case.read_organ(organ, region=box), case.region_space(box)
        elif box is not None:
            data, space = case.read_region(box), case.region_space(box)
        else:
            data, space = case.read_labels(), case.space
    if out_path.name.endswith(".npy"):
        np.save(out_path, data)
    else:
        voxels = data.astype(np.uint8) if data.dtype == np.bool_ else data
        nib.save(nib.Nifti1Image(voxels, nifti_affine(space)), out_path)
    click.echo(f"wrote {out_path}: shape {data.shape}, {np.count_nonzero(data)} non-zero voxels")


@main.command("sample")
@click.argument("archive", type=ARCHIVE)
@click.option("--patch", "patch_size", default="96", show_default=True, help="Patch edge in voxels, or X,Y,Z.")
@click.option("--n", "count", default=8, show_default=True, type=click.IntRange(min=1), help="Patches to write.")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False, path_type=Path), help="Output folder.")
@click.option("--foreground", default=0.33, show_default=True, type=click.FloatRange(0.0, 1.0),
              help="Share of patches centred on a random voxel of a random organ present.")  # fmt: skip
@click.option("--organs", help="Comma-separated organs: one boolean channel each (overlaps exact) instead of labels.")
@click.option("--cases", help="Query expression choosing the cases (default: all).")
@click.option("--seed", default=0, show_default=True, type=int)
def sample_command(
    archive: Path | str, patch_size: str, count: int, out_dir: Path, foreground: float, organs: str | None,
    cases: str | None, seed: int,
) -> None:  # fmt: skip
    """Write patches as a training loader would draw them: NNN.npy, and NNN.json with case, box, organ and affine."""
    import numpy as np

    from medmask_store.model.geometry import nifti_affine
    from medmask_store.sampling import PatchSampler
    from medmask_store.storage.archive import MaskArchive

    try:
        size = [int(n) for n in patch_size.split(",")]
    except ValueError:
        raise click.BadParameter(f"{patch_size!r} is not an edge or X,Y,Z", param_hint="--patch") from None
    if len(size) not in (1, 3):
        raise click.BadParameter(f"{patch_size!r}: give one edge or three", param_hint="--patch")
    with MaskArchive(archive) as store:
        try:
            sampler = PatchSampler(
                store, size[0] if len(size) == 1 else size, cases=cases, foreground_fraction=foreground,
                organs=organs.split(",") if organs else None, seed=seed,
            )  # fmt: skip
        except ValueError as exc:
            raise click.UsageError(str(exc)) from exc
        out_dir.mkdir(parents=True, exist_ok=True)
        for index in range(count):
            patch = sampler.sample()
            np.save(out_dir / f"{index:03d}.npy", patch.data)
            description = {
                "case_id": patch.case_id, "start": list(patch.start), "shape": list(patch.data.shape),
                "organ": patch.organ, "channels": sampler.organs, "affine": nifti_affine(patch.space).tolist(),
            }  # fmt: skip
            (out_dir / f"{index:03d}.json").write_text(json.dumps(description, indent=1) + "\n")
            what = f"centred on {patch.organ}" if patch.organ else "uniform"
            click.echo(f"{index:03d}: case {patch.case_id}, start {list(patch.start)}, {what}")


@main.command("convert")
@click.argument("source", type=ARCHIVE)
@click.argument("destination", type=NEW_ARCHIVE)
@click.option("--overwrite", is_flag=True, help="Replace DESTINATION if it is an archive.")
@PRESET_OPTION
@QUIET_OPTION
@JSON_OPTION
def convert_command(source: Path, destination: Path, overwrite: bool, preset: str, quiet: bool, as_json: bool) -> None:
    """Copy every case to an archive of another backend (.zarr, .zarr.zip, .h5, .msk) or preset, losslessly."""
    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.layout import StorageSettings

    with MaskArchive(source) as store:
        progress = progress_bar("convert", "case", quiet)
        settings = StorageSettings.preset(preset)
        store.copy_to(destination, mode="w" if overwrite else "w-", settings=settings, progress=progress)
        copied = {"source": str(source), "destination": str(destination), "cases": len(store)}
        click.echo(json.dumps(copied) if as_json else f"copied {copied['cases']} case(s) from {source} to {destination}")


class QueryCommand(click.Command):
    """``query``, whose help lists the fields one can query (read from the index module when help is shown)."""

    def format_epilog(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        from medmask_store.query.index import ORGAN_FIELDS

        with formatter.section("Fields"):
            formatter.write_dl([
                ("ORGAN.FIELD", f"a statistic of an organ, e.g. liver.volume_ml; FIELD is one of {', '.join(ORGAN_FIELDS)}"),
                ("NAME", "a case metadata field by its key, e.g. age or sex (as given to import --meta)"),
            ])  # fmt: skip
            formatter.write_paragraph()
            formatter.write_text(
                "Compare with == != < <= > >=, combine with and / or / not, compute with + - * / %. A comparison on an "
                "organ or field a case lacks is false. Text is only compared (sex == 'F'); a value no case holds is "
                "reported with the close ones (warning on stderr). World centroids name their frame: centroid_lps_* are "
                "LPS (DICOM, ITK, Slicer), centroid_ras_* RAS (NIfTI, nibabel: x and y negated)."
            )


@main.command("query", cls=QueryCommand)
@click.argument("archive", type=ARCHIVE)
@click.argument("expression")
@click.option("--json", "as_json", is_flag=True,
              help="Print the matching case ids as a JSON list (with --columns: one object per case).")
@click.option("--csv", "as_csv", is_flag=True,
              help="Print the statistics rows (non-empty organs) of the matching cases as CSV (with --columns: the table).")
@click.option("--columns", metavar="A,B,...",
              help="Print a table of the matching cases, one row each: case_id and these columns, "
              "ORGAN.FIELD or a metadata NAME, e.g. liver.volume_ml,age.")
@INCLUDE_EMPTY_OPTION
@SKIP_DAMAGED_OPTION
def query_command(
    archive: Path | str, expression: str, as_json: bool, as_csv: bool, columns: str | None, include_empty: bool,
    skip_damaged: bool,
) -> None:  # fmt: skip
    """Cases matching EXPRESSION, e.g. 'liver.volume_ml > 2000 and age >= 60' (one id per line).

    When no case matches, it says so on stderr and exits 0.
    """
    from medmask_store.storage.archive import MaskArchive

    if as_csv and as_json:
        raise click.UsageError("pass --csv or --json, not both")
    chosen = comma_list(columns)
    with MaskArchive(archive) as store:
        if chosen:
            table = store.query_table(expression, chosen, include_empty=include_empty, skip_damaged=skip_damaged)
            matches = table["case_id"].tolist()
        else:
            matches = store.query(expression, skip_damaged=skip_damaged)
        if not matches:
            click.echo(f"no case matches {expression!r}", err=True)
        if chosen:
            print_table(table, as_csv, as_json)
        elif as_csv:
            stats = store.stats(include_empty=include_empty, skip_damaged=skip_damaged)
            click.echo(stats[stats["case_id"].isin(matches)].to_csv(index=False), nl=False)
        elif as_json:
            click.echo(json.dumps(matches))
        elif matches:
            click.echo("\n".join(matches))


@main.command("stats")
@click.argument("archive", type=ARCHIVE)
@click.option("--organs", metavar="A,B,...", help="Only these organs (comma-separated).")
@click.option("--fields", metavar="F,G,...",
              help="Only these columns: organ statistics (see query --help) and metadata fields, e.g. volume_ml,age.")
@click.option("--wide", is_flag=True, help="One row per case: an ORGAN.FIELD column per organ and field, then the metadata.")
@INCLUDE_EMPTY_OPTION
@CSV_OPTION
@JSON_OPTION
@SKIP_DAMAGED_OPTION
def stats_command(
    archive: Path | str, organs: str | None, fields: str | None, wide: bool, include_empty: bool, as_csv: bool,
    as_json: bool, skip_damaged: bool,
) -> None:  # fmt: skip
    """Per-case, per-organ statistics from the archive index: one row per case × non-empty organ, or per case."""
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive) as store:
        stats = store.stats(comma_list(organs), comma_list(fields), wide, include_empty, skip_damaged=skip_damaged)
    print_table(stats, as_csv, as_json)


@main.command("organs")
@click.argument("archive", type=ARCHIVE)
@CSV_OPTION
@JSON_OPTION
@SKIP_DAMAGED_OPTION
def organs_command(archive: Path | str, as_csv: bool, as_json: bool, skip_damaged: bool) -> None:
    """Every organ of the archive: the cases holding it (with voxels) and its volume's 5th, 50th and 95th
    percentiles over those cases, in ml."""
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive) as store:
        census = store.organ_census(skip_damaged=skip_damaged)
    print_table(census, as_csv, as_json)


@main.command("map")
@click.argument("archive", type=ARCHIVE)
@click.argument("function", metavar="MODULE:FUNCTION")
@click.option("--cases", help="Query expression choosing the cases (default: all).")
@click.option("--scheduler", metavar="ADDRESS", help="Run on this Dask scheduler, e.g. tcp://host:8786 [default: local processes].")
@click.option("--csv", "as_csv", is_flag=True, help="Print CSV instead of a table.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON: one object per case.")
@QUIET_OPTION
def map_command(
    archive: Path | str, function: str, cases: str | None, scheduler: str | None, as_csv: bool, as_json: bool, quiet: bool
) -> None:
    """Run FUNCTION(case) over the cases on Dask and print one row per case: case_id, the keys of the dict it
    returns (or result), and error (the exception of a case that failed; exit code 1 if any did).

    MODULE is imported from the current directory or the installed packages; the workers import it too.
    """
    import pkgutil

    from medmask_store.cluster.client import connect
    from medmask_store.storage.archive import MaskArchive

    if as_csv and as_json:  # before the function runs on every case
        raise click.UsageError("pass --csv or --json, not both")
    if ":" not in function:
        raise click.BadParameter(f"expected MODULE:FUNCTION, got {function!r}", param_hint="MODULE:FUNCTION")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())  # as `python -m` does; local worker processes inherit the path
    try:
        fn = pkgutil.resolve_name(function)
    except (ImportError, AttributeError) as exc:
        raise click.BadParameter(f"cannot import {function}: {exc}", param_hint="MODULE:FUNCTION") from exc
    if not callable(fn):
        raise click.BadParameter(f"{function} is not a function", param_hint="MODULE:FUNCTION")
    with connect(scheduler) as client, MaskArchive(archive) as store:
        results = store.map_cases(fn, client, cases, progress=not quiet and sys.stderr.isatty())
    print_table(results, as_csv, as_json)
    failed = results["error"].notna()
    if failed.any():
        click.echo(f"{failed.sum()} of {len(results)} case(s) failed", err=True)
        sys.exit(1)


@main.command("reindex")
@click.argument("archive", type=ARCHIVE)
@QUIET_OPTION
def reindex_command(archive: Path | str, quiet: bool) -> None:
    """Rebuild the archive index from every case's attributes."""
    from medmask_store.storage.archive import MaskArchive

    with MaskArchive(archive, "r+") as store:
        store.reindex(progress=progress_bar("reindex", "case", quiet))
        click.echo(f"indexed {len(store)} case(s)")


@main.command("verify")
@click.argument("archive", type=ARCHIVE)
@QUIET_OPTION
@JSON_OPTION
def verify_command(archive: Path | str, quiet: bool, as_json: bool) -> None:
    """Check every case (attributes, manifests, every chunk, voxel counts) and the index; list every
    problem and exit 1 if there is any."""
    from medmask_store.storage.archive import MaskArchive
    from medmask_store.storage.verify import verify_archive

    with MaskArchive(archive) as store:
        problems = verify_archive(store, progress=progress_bar("verify", "case", quiet))
        if as_json:
            click.echo(json.dumps({"cases": len(store), "problems": problems}))
        else:
            for problem in problems:
                click.echo(problem)
            click.echo(f"{len(store)} case(s) checked, {len(problems)} problem(s)")
    if problems:
        sys.exit(1)


@main.command("demo")
@click.argument("source", required=False, type=click.Path(exists=True, file_okay=False, path_type=Path))
@click.option("--workdir", type=click.Path(path_type=Path), help="Keep the archive and exports here.")
def demo_command(source: Path | None, workdir: Path | None) -> None:
    """Round-trip a mask folder (default: a built-in phantom) and print sizes."""
    import tempfile

    from medmask_store.demo import run_demo

    with tempfile.TemporaryDirectory() as tmp:
        report = run_demo(workdir or Path(tmp), source)
        click.echo(f"source       {report.source} ({report.organs} organs, {report.nonempty_organs} non-empty)")
        click.echo(f"overlapping  {', '.join(report.overlapping_organs) or 'none'} (their shared voxels go to binary layers)")
        click.echo(f"imported     into {report.archive} in {report.import_seconds:.2f} s")
        click.echo(f"NIfTI        {report.nifti_bytes / 1024:10.1f} KB")
        for (preset, suffix), (size, files) in report.archive_bytes.items():
            click.echo(f"{preset:8} {suffix:9} {size / 1024:6.1f} KB in {files} file(s) "
                       f"({report.nifti_bytes / size:.1f}x smaller)")
        if report.lossless:
            click.echo(f"round trip   all {report.organs} organs bit-exact in every backend, NIfTI affines equal")
        else:
            click.echo("round trip   FAILED: " + "; ".join(report.mismatches))
            sys.exit(1)
