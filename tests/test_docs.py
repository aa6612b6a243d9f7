"""The generated reference pages are current: the API reference from the docstrings."""

import importlib.util
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def test_the_api_reference_is_generated_from_the_current_docstrings():
    spec = importlib.util.spec_from_file_location("api_reference", DOCS / "api_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert (DOCS / "api.md").read_text() == module.reference(), "run python docs/api_reference.py"
    assert "### `def compare(" in module.reference() and "### `class SparseVD(" in module.reference()
