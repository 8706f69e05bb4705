"""CLI conventions: option names in messages, -h, full summaries, rm / mv, export --organs, progress, info filters."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from helpers import ok, run
from spacetransformer import Space

import medmask_store
from medmask_store.cli.main import ALIASES, main
from medmask_store.cli.messages import CLI_FIXES, in_cli_words
from medmask_store.io.formats import single_case_loader
from medmask_store.storage.archive import MaskArchive

PACKAGE = Path(medmask_store.__file__).parent


@pytest.fixture
def archive(tmp_path: Path, phantom: tuple[dict[str, np.ndarray], Space]) -> Path:
    masks, space = phantom
    path = tmp_path / "a.zarr"
    with MaskArchive(path, "w") as store:
        store.add_case("c1", masks, space=space)
        store.add_case("c2", {"liver": masks["liver"]}, space=space)
        store.add_case("c3", {"liver": masks["liver"]}, space=space)
    return path


def failed(*args: object) -> str:
    result = run(*args)
    assert result.exit_code == 1, result.output
    return result.output


# -- messages name options -------------------------------------------------------
def test_every_python_argument_fix_in_the_library_has_its_cli_words() -> None:
    library = "\n".join(path.read_text() for path in PACKAGE.rglob("*.py") if path.parent.name != "cli")
    assert all(phrase.lstrip(", ") in library for phrase in CLI_FIXES), "a library message changed"
    # SegmentationMask's "pass case_id=..." is for Python callers only: no command reaches it.
    assert set(re.findall(r"pass (\w+)=", library)) - {"case_id"} == {
        re.search(r"pass (\w+)=", phrase).group(1) for phrase in CLI_FIXES
    }


def test_cli_words() -> None:
    assert in_cli_words("case 'a' already exists in x.h5; pass overwrite=True to replace it") == (
        "case 'a' already exists in x.h5; pass --overwrite to replace it"
    )
    assert in_cli_words(
        "cannot tell the archive format of x: use one of the suffixes .zarr, .h5, or pass backend="
    ) == ("cannot tell the archive format of x: use one of the suffixes .zarr, .h5")


def test_unmapped_labels_name_the_cli_option(tmp_path: Path, phantom) -> None:
    masks, space = phantom
    labels = np.zeros(space.shape, np.uint8)
    labels[masks["liver"]] = 7
    nib.save(nib.Nifti1Image(labels, np.eye(4)), tmp_path / "seg.nii.gz")
    (tmp_path / "map.json").write_text(json.dumps({"spleen": 3}))
    output = failed("import", tmp_path / "a.zarr", tmp_path / "seg.nii.gz", "--labels", tmp_path / "map.json")
    assert "pass --name-unmapped" in output and "unmapped=" not in output


def test_unknown_archive_format_names_no_python_argument(tmp_path: Path) -> None:
    output = failed("ls", tmp_path)
    assert output.startswith("Error: InvalidArchive: cannot tell the archive format of")
    assert "backend=" not in output


# -- help --------------------------------------------------------------------------
@pytest.mark.parametrize("command", [[], ["info"], ["export"], ["mv"]])
def test_dash_h_is_help(command: list[str]) -> None:
    assert ok(*command, "-h").output == ok(*command, "--help").output


def test_top_level_help_shows_whole_summaries() -> None:
    text = " ".join(ok("--help").output.split())
    assert "query Cases matching EXPRESSION, e.g. 'liver.volume_ml > 2000 and age >= 60' (one id per line)." in text
    assert "..." not in text.split("Commands:")[1]
    assert "rm Delete cases" in text and "also named delete" in text and " mv Rename a case" in text


# -- rm / mv ---------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rm", "delete"])
def test_rm_and_its_alias(archive: Path, name: str) -> None:
    assert ALIASES["delete"] == "rm"
    assert ok(name, archive, "c1", "c2").output == f"deleted 2 case(s) from {archive}\n"
    assert ok("ls", archive).output == "c3\n"


def test_rm_of_a_missing_case_deletes_nothing(archive: Path) -> None:
    assert "no case 'nope' in" in failed("rm", archive, "c1", "nope")
    assert ok("ls", archive).output == "c1\nc2\nc3\n"


def test_mv(archive: Path, phantom) -> None:
    assert ok("mv", archive, "c1", "first").output == f"renamed case c1 to first in {archive}\n"
    assert ok("ls", archive).output == "c2\nc3\nfirst\n"
    with MaskArchive(archive) as store:
        assert np.array_equal(store["first"].read_organ("liver"), phantom[0]["liver"])


def test_mv_refuses_an_existing_new_id_and_a_missing_old_id(archive: Path) -> None:
    assert failed("mv", archive, "c1", "c2") == (
        f"Error: CaseExists: cannot rename case 'c1' to 'c2': 'c2' already exists in {archive}\n"
    )
    assert failed("mv", archive, "x", "y") == (
        f"Error: CaseNotFound: cannot rename case 'x': there is no such case in {archive}\n"
    )
    assert ok("ls", archive).output == "c1\nc2\nc3\n"


# -- export --organs ---------------------------------------------------------------
def test_export_chosen_organs_as_a_folder(archive: Path, tmp_path: Path, phantom) -> None:
    ok("export", archive, "c1", tmp_path / "out", "--organs", "liver,spleen")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["liver.nii.gz", "spleen.nii.gz"]
    liver = np.asarray(nib.load(tmp_path / "out" / "liver.nii.gz").dataobj).astype(bool)
    assert np.array_equal(liver, phantom[0]["liver"])


def test_export_chosen_organs_as_one_label_file(archive: Path, tmp_path: Path, phantom) -> None:
    masks = phantom[0]
    ok("export", archive, "c1", tmp_path / "seg.nii.gz", "--organs", "liver,spleen")
    label_map = json.loads((tmp_path / "seg.json").read_text())
    assert set(label_map) == {"liver", "spleen"}
    labels = np.asarray(nib.load(tmp_path / "seg.nii.gz").dataobj)
    assert set(np.unique(labels)) == {0, *label_map.values()}
    assert np.array_equal(labels == label_map["spleen"], masks["spleen"])
    # rib_right_12 lies inside the liver: without it, the liver exports whole, no overlap to allow
    assert np.array_equal(labels == label_map["liver"], masks["liver"] & ~masks["spleen"])


def test_export_of_an_unknown_organ_writes_nothing(archive: Path, tmp_path: Path) -> None:
    output = failed("export", archive, "c1", tmp_path / "out", "--organs", "liver,livr")
    assert output.startswith("Error: OrganNotFound: case 'c1' has no organ 'livr'; it has ")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("name", ["c1.seg.nrrd", "c1.ome.zarr"])
def test_export_chosen_organs_in_the_whole_case_formats(archive: Path, tmp_path: Path, phantom, name: str) -> None:
    """Overlapping organs (rib_right_12 inside the liver) export with their values and colours."""
    masks = phantom[0]
    ok("export", archive, "c1", tmp_path / name, "--organs", "rib_right_12,liver")
    data = single_case_loader(tmp_path / name)()
    with MaskArchive(archive) as stored:
        case = stored["c1"]
        assert data.mapping == {organ: case.mapping[organ] for organ in ("rib_right_12", "liver")}
        assert {organ: data.colors.get(organ, case.colors[organ]) for organ in data.mapping} == {
            organ: case.colors[organ] for organ in data.mapping
        }
    for organ in data.mapping:
        assert np.array_equal(data.organ_mask(organ), masks[organ]), organ


# -- progress ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "args",
    [
        ["verify", "{a}"], ["reindex", "{a}"], ["convert", "{a}", "{t}/b.h5"], ["export", "{a}", "c1", "{t}/o"],
        ["map", "{a}", "builtins:repr"],
    ],
)  # fmt: skip
def test_progress_bars_show_on_a_terminal_unless_quiet(archive: Path, tmp_path: Path, args: list[str]) -> None:
    command = [a.format(a=archive, t=tmp_path) for a in args]
    script = "import sys; sys.stderr.isatty = lambda: True\nfrom medmask_store.cli.main import main\nmain(sys.argv[1:])"
    runs = []
    for extra in ([], ["--quiet"]):
        for target in (tmp_path / "b.h5", tmp_path / "o"):
            subprocess.run(["rm", "-rf", str(target)], check=True)
        done = subprocess.run(["python", "-c", script, *command, *extra], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        runs.append(done.stderr)
    assert "it/s]" in runs[0] or "/s]" in runs[0] or "100% Completed" in runs[0]  # tqdm's, or Dask's (map)
    assert runs[1] == ""


def test_no_progress_bar_when_stderr_is_not_a_terminal(archive: Path) -> None:
    result = ok("verify", archive)
    assert result.output == "3 case(s) checked, 0 problem(s)\n"


# -- info filters ------------------------------------------------------------------
def info(*args: object) -> dict:
    return json.loads(ok("info", *args, "--json").output)


def test_info_nonempty_and_organ(archive: Path, phantom) -> None:
    masks = phantom[0]
    nonempty = {name for name, mask in masks.items() if mask.any()}
    assert len(nonempty) < len(masks)  # the phantom has empty organs
    assert set(info(archive, "c1", "--nonempty")["organs"]) == nonempty
    assert list(info(archive, "c1", "--organ", "spleen", "--organ", "liver")["organs"]) == sorted(
        ["liver", "spleen"], key=list(masks).index
    )
    table = ok("info", archive, "c1", "--organ", "liver").output.splitlines()
    assert len(table) == 3 and table[2].startswith("liver ")


def test_info_of_an_unknown_organ(archive: Path) -> None:
    assert failed("info", archive, "c1", "--organ", "livr") == (
        f"Error: OrganNotFound: case 'c1' in {archive} has no organ 'livr'\n"
    )


def test_main_is_the_console_script() -> None:
    assert main.name == "main"
