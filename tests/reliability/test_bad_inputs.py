"""Every hostile or broken input is refused with a named error and leaves every file unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest
from bad_inputs import BAD_INPUTS, BadInput, prepare, run_bad_input

GROUPS = {"file", "id", "organ name", "mask", "space", "query", "crafted archive"}


def test_the_catalog_covers_every_kind_of_input():
    assert len(BAD_INPUTS) >= 40
    assert {bad.group for bad in BAD_INPUTS} == GROUPS


@pytest.mark.parametrize("bad", [b for b in BAD_INPUTS if not b.heavy], ids=lambda b: b.name)
def test_bad_input_is_a_named_error_and_changes_nothing(tmp_path: Path, bad: BadInput):
    prepare(bad, tmp_path)
    outcome = run_bad_input(bad, tmp_path)
    assert outcome.named, outcome
    assert outcome.unchanged, outcome
    assert outcome.message and "\n" not in outcome.message, outcome
