"""The fidelity page (docs/reference/fidelity.md) and the `@pytest.mark.fidelity` markers it is
generated from: every marker names registered methods and says what it compares with and how
closely, the page is up to date, and the methods without an independent check are the list below."""

from pathlib import Path

import pytest

from harness import docpages, registry
from harness.errors import UserError

ROOT = Path(__file__).resolve().parents[1]
MARKS = docpages.fidelity_marks(ROOT / "tests")

# Registered methods that no test checks against an independent reference: the fine-tuned pi_ft
# and yarn_ft, the trivial noise priors, the ORM, beam-search and precomputed-score scorers, and the
# video sources. Covering one, or dropping a marker, changes this list on purpose.
WITHOUT_FIDELITY_TEST = {
    "beam_search",
    "fixed",
    "independent",
    "orm",
    "pi_ft",
    "precomputed",
    "synthetic_scenes",
    "synthetic_videos",
    "video_folder",
    "yarn_ft",
}


def test_every_marker_names_registered_methods():
    registry.load()
    unknown = [(m["test"], name) for m in MARKS for name in m["methods"] if name not in registry.METHODS]
    assert MARKS and all(m["methods"] for m in MARKS)
    assert not unknown, f"fidelity markers naming no registered method: {unknown}"


def test_every_marker_says_what_it_compares_with_and_how_closely():
    vague = [m["test"] for m in MARKS if not m["reference"].strip() or not m["tolerance"].strip()]
    assert not vague, f"fidelity markers without a reference or a tolerance: {vague}"


def test_methods_without_a_fidelity_test_are_the_known_list():
    registry.load()
    assert set(registry.METHODS) - {n for m in MARKS for n in m["methods"]} == WITHOUT_FIDELITY_TEST


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
