"""MATH answer extraction and equivalence grading.

Extraction: the last `\\boxed{...}` (or `\\fbox{...}`) with brace matching, the `\\boxed 5` space form,
else a "final answer is ..." marker; no last-number fallback (it turns unanswered text into answers).

Equivalence (gold first, like math-verify's `verify(gold, pred)`), most conservative first:
1. normalised strings equal (Hendrycks-style stripping: \\dfrac, \\left, ^\\circ, \\$, \\%, \\text{ units},
   spaces, `x =` prefixes, thousands separators);
2. both sides exact rationals (integers, decimals, a/b, \\frac{a}{b}): compared exactly, so 0.5 = 1/2
   but 0.333 != 1/3;
3. math-verify (pinned, see pyproject) on `$gold$` and `$pred$`, run in a worker process with a
   wall-clock timeout (math-verify's own timeouts use SIGALRM, which breaks outside the main
   thread; so they are switched off and the worker is killed instead). A timeout or an error is
   "not equivalent". Without math-verify installed only 1-2 run (the record says which).
Two missing answers are never equivalent (Hendrycks' is_equiv(None, None) is True)."""

from __future__ import annotations

import multiprocessing as mp
import re
from fractions import Fraction

NAME = "harness.mathgrade"
VERSION = "1"


def last_boxed(text: str) -> str | None:
    """Content of the last \\boxed{...}/\\fbox{...} (brace-matched), or of `\\boxed 5`."""
    if text is None:
        return None
    i = max(text.rfind("\\boxed"), text.rfind("\\fbox"))
    if i < 0:
        return None
    j = i + (6 if text.startswith("\\boxed", i) else 5)
    if text.startswith(" ", j) and not text.startswith("{", j):
        rest = text[j + 1 :]
        return re.split(r"[$\n]", rest)[0].strip() or None
    while j < len(text) and text[j] == " ":
        j += 1
    if j >= len(text) or text[j] != "{":
        return None
    depth = 0
    for k in range(j, len(text)):
        depth += {"{": 1, "}": -1}.get(text[k], 0)
        if depth == 0:
            return text[j + 1 : k].strip()
    return None  # unbalanced: no answer


_MARKERS = re.compile(
    r"(?:final answer is|the answer is)[:\s]*\$?([^$\n]+?)\$?\s*(?:\.\s*(?:I hope|$)|$)", re.IGNORECASE
)


def extract_answer(text: str) -> str | None:
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed
    found = _MARKERS.findall(text or "")
    return found[-1].strip().rstrip(".") if found else None


def _fix_fracs(s: str) -> str:
    # \frac12 -> \frac{1}{2}, \frac1{2} -> \frac{1}{2}
    s = re.sub(r"\\frac(\d)(\d)", r"\\frac{\1}{\2}", s)
    s = re.sub(r"\\frac(\d)\{", r"\\frac{\1}{", s)
    return re.sub(r"\\frac\{([^{}]*)\}(\d)", r"\\frac{\1}{\2}", s)


def normalize(ans: str | None) -> str | None:
    """Hendrycks-style canonical string (an implementation of the rules in anchors §2.2)."""
    if ans is None:
        return None
    s = ans.strip().replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
    s = s.replace("tfrac", "frac").replace("dfrac", "frac").replace("\\left", "").replace("\\right", "")
    s = re.sub(r"\^\s*\{?\\circ\}?", "", s).replace("\\$", "").replace("$", "")
    s = s.replace("\\%", "").replace("%", "")
    s = re.sub(r"\\text\{\s*([a-zA-Z ]+)\}\s*$", lambda m: "" if _before_unit(s, m) else m.group(0), s)
    s = re.sub(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}", r"\1", s)
    s = re.sub(r"^[a-zA-Z]\w{0,1}\s*=\s*", "", s)  # "x = 5" -> "5" (short left-hand side)
    s = s.replace(" ", "").replace("\\,", "").replace("\\;", "")
    s = re.sub(r"(?<=\d),(?=\d{3}(?:\D|$))", "", s)  # 40,000 -> 40000
    s = re.sub(r"\\sqrt(\w)", r"\\sqrt{\1}", s)
    s = _fix_fracs(s)
    if s.startswith("."):
        s = "0" + s
    s = re.sub(r"(?<=\d)\.0+$", "", s)  # 5.0 -> 5
    return s.lower() if re.fullmatch(r"[A-Za-z ]+", s) else s


def _before_unit(s: str, m) -> bool:
    return bool(re.search(r"[\d}]\s*$", s[: m.start()]))  # "10\text{ cm}": a unit after a number


def as_rational(s: str | None) -> Fraction | None:
    """Exact value of an integer, decimal, a/b or \\frac{a}{b} (signs allowed), else None."""
    if s is None:
        return None
    t = s.replace("{", "(").replace("}", ")")
    m = re.fullmatch(r"(-?)\\frac\((-?\d+)\)\((-?\d+)\)", t) or re.fullmatch(r"(-?)\(?(-?\d+)\)?/\(?(-?\d+)\)?", t)
    try:
        if m:
            val = Fraction(int(m.group(2)), int(m.group(3)))
            return -val if m.group(1) else val
        if re.fullmatch(r"-?\d+(\.\d+)?|-?\.\d+", s):
            return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None
    return None


# -- math-verify in a worker process ------------------------------------------------------------
def _mv_worker(conn):
    from math_verify import parse, verify

    while True:
        gold, pred = conn.recv()
        try:
            g = parse(f"${gold}$", parsing_timeout=None)
            p = parse(f"${pred}$", parsing_timeout=None)
            conn.send(bool(g) and bool(p) and bool(verify(g, p, timeout_seconds=None)))
        except Exception:  # any parser failure: not equivalent (conservative)
            conn.send(False)


def math_verify_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("math-verify")
    except Exception:
        return None


class Grader:
    """Equivalence with a cache; math-verify runs in one persistent worker, killed on timeout."""

    def __init__(self, timeout_s: float = 5.0, use_math_verify: bool = True, worker=None):
        self.timeout_s = timeout_s
        self._worker = worker or _mv_worker  # a module-level function(conn) (tests swap it)
        self.use_math_verify = use_math_verify and math_verify_version() is not None
        self._cache: dict[tuple[str, str], bool] = {}
        self._proc = None
        self._conn = None
        self.timeouts = 0
        self.math_verify_calls = 0

    def info(self) -> dict:
        return {
            "name": NAME,
            "version": VERSION,
            "math_verify": math_verify_version() if self.use_math_verify else None,
            "timeout_s": self.timeout_s,
            "order": "gold first",
            "steps": ["normalised string", "exact rational"] + (["math-verify"] if self.use_math_verify else []),
            "math_verify_calls": self.math_verify_calls,
            "timeouts": self.timeouts,
        }

    def equivalent(self, gold: str | None, pred: str | None) -> bool:
        if gold is None or pred is None:
            return False
        key = (gold, pred)
        if key not in self._cache:
            self._cache[key] = self._decide(gold, pred)
        return self._cache[key]

    def _decide(self, gold: str, pred: str) -> bool:
        ng, np_ = normalize(gold), normalize(pred)
        if ng == np_ and ng != "":
            return True
        rg, rp = as_rational(ng), as_rational(np_)
        if rg is not None and rp is not None:
            return rg == rp
        if not self.use_math_verify:
            return False
        return self._math_verify(gold, pred)

    def _math_verify(self, gold: str, pred: str) -> bool:
        if self._proc is None or not self._proc.is_alive():
            ctx = mp.get_context("spawn")
            self._conn, child = ctx.Pipe()
            self._proc = ctx.Process(target=self._worker, args=(child,), daemon=True)
            self._proc.start()
        self.math_verify_calls += 1
        self._conn.send((gold, pred))
        # the first call also pays for importing sympy in the worker
        if self._conn.poll(self.timeout_s + (30 if self.math_verify_calls == 1 else 0)):
            return self._conn.recv()
        self.timeouts += 1
        self.close()
        return False

    def close(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.join()
            self._proc = None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def classes(self, answers: list[str | None]) -> list[int]:
        """Equivalence-class id per answer (-1: no answer). Normalised strings group first, then
        class representatives merge when the grader calls them equivalent (either order)."""
        reps: list[str] = []
        by_norm: dict[str, int] = {}
        out = []
        for a in answers:
            if a is None or normalize(a) == "":
                out.append(-1)
                continue
            n = normalize(a)
            if n not in by_norm:
                cid = next((i for i, r in enumerate(reps) if self.equivalent(r, a) or self.equivalent(a, r)), None)
                if cid is None:
                    reps.append(a)
                    cid = len(reps) - 1
                by_norm[n] = cid
            out.append(by_norm[n])
        return out
