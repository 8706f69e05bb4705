"""Lazy package exports (medmask_store.lazy): every public name resolves, on first use, to its object."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGES = ["medmask_store", "medmask_store.codecs", "medmask_store.ingest", "medmask_store.model",
            "medmask_store.query", "medmask_store.storage"]


@pytest.mark.parametrize("name", PACKAGES)
def test_every_exported_name_resolves(name: str) -> None:
    package = importlib.import_module(name)
    for exported in package.__all__:
        value = getattr(package, exported)
        assert getattr(value, "__name__", exported) == exported
        assert exported in dir(package)


@pytest.mark.parametrize("name", PACKAGES)
def test_type_checkers_see_every_exported_name(name: str) -> None:
    """Each name of ``__all__`` is imported in the package's source (most under ``TYPE_CHECKING``)."""
    package = importlib.import_module(name)
    tree = ast.parse(Path(package.__file__).read_text())
    imported = {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) for alias in node.names}
    assert set(package.__all__) <= imported


@pytest.mark.parametrize("name", PACKAGES)
def test_unknown_names_raise_attribute_error(name: str) -> None:
    package = importlib.import_module(name)
    with pytest.raises(AttributeError, match=f"module '{name}' has no attribute 'no_such_name'"):
        package.no_such_name  # noqa: B018
    assert not hasattr(package, "no_such_name")


def test_star_import_gives_every_public_name() -> None:
    namespace: dict[str, object] = {}
    exec("from medmask_store import *", namespace)
    import medmask_store

    assert set(medmask_store.__all__) <= set(namespace)
    assert namespace["MaskArchive"] is medmask_store.MaskArchive
