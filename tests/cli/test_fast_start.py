"""Fast start: `medmask-store --help` and `ls` import none of the heavy libraries (timings: benchmarks/cli_start.py)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import click

from medmask_store.cli.main import main
from medmask_store.phantom import make_phantom
from medmask_store.storage.archive import MaskArchive
from medmask_store.storage.layout import PRESETS

HEAVY = (
    "numpy", "spacetransformer", "pandas", "zarr", "numcodecs", "h5py", "hdf5plugin", "nibabel", "crackle", "tqdm",
    "concurrent.futures",  # stdlib, but 20 ms with the logging it loads
)  # fmt: skip
# Runs in a fresh interpreter: the statements, then prints which HEAVY packages got imported.
REPORT = "; print(sorted(m for m in {heavy!r} if m in sys.modules))"


def imported_after(statements: str, *args: object) -> list[str]:
    """The HEAVY packages a fresh interpreter has imported after running ``statements`` (``sys.argv[1:]`` = args)."""
    source = "import sys; " + statements + REPORT.format(heavy=HEAVY)
    completed = subprocess.run([sys.executable, "-c", source, *map(str, args)], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    return ast.literal_eval(completed.stdout.splitlines()[-1])


def test_package_import_is_light() -> None:
    assert imported_after("import medmask_store") == []


def test_command_line_module_is_light() -> None:
    assert imported_after("import medmask_store.cli.main") == []


def test_help_is_light() -> None:
    statements = "from medmask_store.cli.main import main; main(['--help'], standalone_mode=False)"
    assert imported_after(statements) == []


def test_ls_imports_only_numpy_and_the_backend_library(archive_path: Path) -> None:
    masks, space = make_phantom(shape=(16, 16, 16), n_organs=2, n_empty=0)
    with MaskArchive(archive_path, "w") as archive:
        archive.add_case("ct01", masks, space=space)
    statements = "from medmask_store.cli.main import main; main(['ls', sys.argv[1]], standalone_mode=False)"
    backend_library = ["h5py"] if archive_path.suffix == ".h5" else []
    assert imported_after(statements, archive_path) == sorted(["numpy", "spacetransformer", *backend_library])


def test_preset_choices_are_the_presets() -> None:
    """The CLI writes the preset names out (storage.layout imports NumPy): they must stay the presets."""
    for name in ("import", "convert"):
        command = main.commands[name]
        (preset,) = (param for param in command.params if param.name == "preset")
        assert isinstance(preset.type, click.Choice)
        assert list(preset.type.choices) == list(PRESETS)


def test_commands_start_numpy_without_blas_threads_unless_the_user_asks(tmp_path: Path) -> None:
    statements = (
        "import os; from medmask_store.cli.main import main; main(['ls', '--help'], standalone_mode=False); "
        "print(os.environ.get('OPENBLAS_NUM_THREADS'))"
    )
    for given, expected in ((None, "1"), ("3", "3")):
        env = {key: value for key, value in os.environ.items() if key != "OPENBLAS_NUM_THREADS"}
        env.update({} if given is None else {"OPENBLAS_NUM_THREADS": given})
        completed = subprocess.run([sys.executable, "-c", statements], capture_output=True, text=True, env=env, timeout=120)
        assert completed.returncode == 0, completed.stderr
        assert completed.stdout.splitlines()[-1] == expected
