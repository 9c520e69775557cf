"""The fidelity page (docs/reference/fidelity.md) and the `@pytest.mark.fidelity` markers it is
generated from: the page is up to date and the markers are read without importing the tests."""

from pathlib import Path

import pytest

from harness import docpages
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]


def test_page_is_up_to_date():
    page = (ROOT / "docs" / "reference" / "fidelity.md").read_text()
    assert page == docpages.fidelity_page(ROOT / "tests"), "run `.venv/bin/harness docs` and commit the page"


def test_markers_are_read_without_importing_the_tests(tmp_path):
    """Functions and test-class methods, any decorator order, module-level constants (a test's
    parameter list); other marks ignored; any other argument is refused with the file and line."""
    (tmp_path / "test_a.py").write_text(
        "import pytest, nothere\n"
        "NAMES = ['pi', 'yarn']\n"
        "R = 'r'\n"
        "@pytest.mark.parametrize('x', NAMES)\n"
        "@pytest.mark.fidelity(*NAMES, reference=R, tolerance='exact')\n"
        "def test_f(x): pass\n"
        "class TestC:\n"
        "    @pytest.mark.fidelity('ntk', reference='s', tolerance='rel 1e-5')\n"
        "    def test_m(self): pass\n"
        "@pytest.mark.slow\n"
        "def test_g(): pass\n"
    )
    assert docpages.fidelity_marks(tmp_path) == [
        {"methods": ["pi", "yarn"], "reference": "r", "tolerance": "exact", "test": "tests/test_a.py::test_f"},
        {"methods": ["ntk"], "reference": "s", "tolerance": "rel 1e-5", "test": "tests/test_a.py::TestC::test_m"},
    ]
    (tmp_path / "test_b.py").write_text(
        "import pytest\n\n@pytest.mark.fidelity('pi', reference=str(1), tolerance='x')\ndef test_h(): pass\n"
    )
    with pytest.raises(UserError, match="test_b.py:3"):
        docpages.fidelity_marks(tmp_path)
