"""Answer extraction and equivalence: a table of tricky cases, and the process timeout."""

import time

import pytest

from harness.mathgrade import Grader, as_rational, extract_answer, last_boxed, normalize


@pytest.mark.parametrize(
    "text,expected",
    [
        ("so \\boxed{\\frac{1}{2}}.", "\\frac{1}{2}"),  # nested braces
        ("first \\boxed{3} then \\boxed{\\sqrt{2}}", "\\sqrt{2}"),  # the last box wins
        ("\\fbox{7}", "7"),
        ("\\boxed 5$ done", "5"),  # space form
        ("\\boxed{\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}}", "\\begin{pmatrix} 1 \\\\ 2 \\end{pmatrix}"),
        ("\\boxed{1", None),  # unbalanced
        ("no answer here 42", None),  # no last-number fallback
    ],
)
def test_last_boxed(text, expected):
    assert last_boxed(text) == expected


def test_extract_answer_markers():
    assert extract_answer("Thus the final answer is $12$. I hope it is correct.") == "12"
    assert extract_answer("blah. The answer is 7") == "7"
    assert extract_answer("nothing") is None


# (gold, prediction, equivalent?) — what this grader decides, conservative where libraries differ
TABLE = [
    ("\\frac{1}{2}", "0.5", True),
    ("\\frac12", "\\dfrac{1}{2}", True),
    ("1/3", "0.333", False),  # strict: decimals are not rounded to fractions
    ("0.5", "\\frac{2}{4}", True),
    ("40,\\!000", "40000", True),
    ("40,000", "40000", True),
    ("50\\%", "50", True),  # Hendrycks-style: the percent sign is dropped
    ("50\\%", "0.5", False),  # ... but 50 % is not turned into 0.5
    ("10\\text{ cm}", "10", True),  # trailing unit
    ("90^\\circ", "90", True),
    ("\\$5", "5", True),
    ("x = 5", "5", True),
    ("(1,2]", "(1,2]", True),
    ("(1,2]", "[1,2]", False),  # interval endpoints matter
    ("(2,3)", "(3,2)", False),  # ordered pairs are ordered
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}1 \\\\ 2\\end{pmatrix}", True),
    ("\\begin{pmatrix}1\\\\2\\end{pmatrix}", "\\begin{pmatrix}2\\\\1\\end{pmatrix}", False),
    ("\\text{Monday}", "monday", True),  # text answers: case-insensitive
    ("\\text{Monday}", "Tuesday", False),
    ("2\\sqrt{2}", "\\sqrt{8}", True),  # math-verify: symbolic equality
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("3", "-3", False),
    ("3", None, False),
    (None, None, False),  # two missing answers never match
]


@pytest.fixture(scope="module")
def grader():
    g = Grader(timeout_s=10)
    yield g
    g.close()


@pytest.mark.parametrize("gold,pred,same", TABLE)
def test_equivalence_table(grader, gold, pred, same):
    assert grader.equivalent(gold, pred) is same


def test_exact_rationals():
    assert as_rational("-\\frac{3}{4}") == as_rational("-0.75")
    assert as_rational("\\sqrt{2}") is None
    assert normalize("\\left( 1, 2 \\right)") == "(1,2)"


def test_classes_group_equivalent_answers(grader):
    ids = grader.classes(["\\frac12", "0.5", "1/2", "3", None, "3.0", ""])
    assert ids[0] == ids[1] == ids[2] and ids[3] == ids[5] and ids[0] != ids[3]
    assert ids[4] == -1 and ids[6] == -1


def _sleepy_worker(conn):
    while True:
        conn.recv()
        time.sleep(60)


def test_timeout_kills_the_worker_and_answers_not_equivalent():
    g = Grader(timeout_s=0.5, worker=_sleepy_worker)
    g.math_verify_calls = 1  # skip the first-call import allowance
    assert g.equivalent("\\sqrt{2}", "2^{1/2}") is False  # the worker sleeps 60 s per call: only the
    assert g.timeouts == 1 and g._proc is None  # timeout answers, and it killed the worker
    assert g.info()["timeouts"] == 1
