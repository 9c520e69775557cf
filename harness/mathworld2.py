"""Version 2 of the synthetic math world (harness.mathworld is version 1): the same kind of
seeded word problems, but solutions whose steps show their arithmetic, vary like a real policy's,
and err at per-step rates, so that a step's correctness is checkable from the text by a small
model. Select it with `harness.mathworld.world(2)` (math_prm_bon: `world_version=2`).

THE POLICY IS A DOCUMENTED STOCHASTIC PROGRAM, NOT A LANGUAGE MODEL (as in version 1).

Problems (`problem(seed)`, ids "w2-<seed>"): a start amount, then 2-6 operations (level 1-5) told
as in version 1 ("buys 7 more", "gives away 5", "ends up with 4 times as many", "shares them
equally among 3 friends and keeps one share", "gets y more, where 3y + 4 = 19"), with larger
numbers than version 1 (multipliers up to 9, so two- and three-digit products). The answer is the
final amount.

Every step states its operands and its result as equations "A op B = C" (`equations(text)` finds
them; `holds(text)` re-computes them), e.g. "Multiply 17 by 4: 17 * 4 = 68." Correct solutions of
one problem differ in:
- wording: 2-4 templates per operation ("Add the 7 she buys: 45 + 7 = 52.", "45 + 7 = 52.", ...);
- order: two adjacent operations that commute (add/subtract, multiply/multiply, divide/divide when
  divisible) are swapped with probability 0.3; the algebra clues' y are solved all up front
  (probability 0.4: independent sub-results first) or where they are used;
- intermediate steps: a multiplication or division by 4, 6, 8 or 9 is split into two steps by its
  factors (probability 0.4); solving for y is its own step ("Solve 3y + 4 = 19: 19 - 4 = 15, and
  15 / 3 = 5, so y = 5.") or merged into the step that adds y (0.3); the answer is stated in the
  last operation's step or in a closing step of its own (0.4).

Errors, per step, each at its own base rate times the problem's difficulty (log-normal, σ 0.6)
times a size factor 1 + log10(1 + |number|)/2 (multiplications 1.5x for slips):
- "slip" (3.5 %): the step's result is off by ±1, ±2 or ±10, or its last two digits are swapped;
  the equation in the text then fails a literal re-computation;
- "operand" (2 %): the amount carried into the step is copied wrong: an earlier amount of the
  solution (or the start) instead of the current one, or the current one with a digit off by one;
  visible against the previous step's result;
- "wrong_op" (0.8 %): the step's words name the operation, its equation uses another symbol;
- "algebra" (3 % per solve): y from c + b instead of c - b (an equation that holds but a wrong
  method, visible against the quoted clue) or y off by one (a failing equation);
- "skip" (1.2 % per operation): an operation is left out; the label goes to the next step written
  (visible only against the problem text, which the world PRMs read only with read_problem=true);
- "stopped" (1 % per step): the policy gives up (a last step without an answer).
After an error the policy continues correctly from what it wrote, so errors propagate to the final
answer (a division of an amount an error made indivisible writes the floor, a failing equation).
With these rates about 14 % of steps carry an error (slips the most), about half the solutions
are correct, and about 6 % of the solutions with an error still reach the right answer (mostly a
floor division absorbing a small slip: a right answer from a flawed process);
tests/test_mathworld2.py checks the ranges. A prefix is correct when none of its steps carries an
error (`step_ok`).

Seeds: problem seeds and sample seeds as in version 1 (`EVAL_SEED_BASE`, `sample_seed`): training
below 1,000,000, evaluation at or above it; a solution is a function of (problem seed, sample seed)."""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field, replace

from harness import mathworld
from harness.mathworld import (
    EVAL_SEED_BASE,
    ITEMS,
    NAMES,
    STOP_TEXT,
    Problem,
    Writer,
    draw_ops,
    sample_seed,
    solution_record,
)

# re-exported: every world module offers the same names (harness.mathworld.world)
__all__ = ["EVAL_SEED_BASE", "STOP_TEXT", "sample_seed", "solution_record"]
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "alg": "+"}
COMPUTE = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b, "/": lambda a, b: a // b}
FACTORS = {4: (2, 2), 6: (2, 3), 8: (2, 4), 9: (3, 3)}
_EQUATION = re.compile(r"(?<![\w.])(-?\d+) ([-+*/]) (-?\d+) = (-?\d+)(?![\d])")

TEMPLATES = {
    "add": [
        "Add the {x} {pron} buys: {eq}.",
        "{Pron} buys {x} more, so {eq}.",
        "After buying {x} more there are {eq} {item}.",
        "{eq}.",
    ],
    "sub": [
        "Subtract the {x} {pron} gives away: {eq}.",
        "{Pron} gives away {x}, which leaves {eq}.",
        "After giving away {x} there are {eq} {item}.",
        "{eq}.",
    ],
    "mul": ["Multiply {a} by {x}: {eq}.", "{x} times as many is {eq}.", "{eq}."],
    "div": ["Divide {a} among {x}: {eq}.", "One of {x} equal shares is {eq}.", "{eq}."],
    "alg": ["Add y = {x}: {eq}.", "{Pron} gets {x} more: {eq}.", "{eq}."],
    "split1": ["{Verb} {a} by {x} in two steps, first by {f}: {eq}.", "First {verb} by {f}: {eq}."],
    "split2": ["Then by {f}: {eq}.", "{Verb} by {f} again to finish: {eq}."],
    "solve": [
        "Solve {A}y + {B} = {C}: {eq1}, and {eq2}, so y = {y}.",
        "From {A}y + {B} = {C}, {A}y is {eq1}, so y is {eq2}.",
    ],
    "merged": ["From {A}y + {B} = {C}: {eq1} and {eq2}, so y = {y} and {eq}."],
    "final": ["The answer is \\boxed{{{v}}}.", "So {name} ends with {v} {item}. The answer is \\boxed{{{v}}}."],
}


def problem(seed: int) -> Problem:
    rng = random.Random(f"mathworld2-{seed}")
    level = rng.randint(1, 5)
    v = start = rng.randint(5, 15 + 10 * level)
    kinds = ["add", "sub", "mul", "mul", "div", "div", "alg"]
    ops = draw_ops(rng, level, v, kinds, 8 + 8 * level, 99, 5 if level < 3 else 9)
    difficulty = math.exp(rng.gauss(0.0, 0.6))
    return Problem(f"w2-{seed}", seed, rng.choice(NAMES), rng.choice(ITEMS), start, ops, level, difficulty, 2)


def problems(n: int, base_seed: int) -> list[Problem]:
    return [problem(base_seed + i) for i in range(n)]


@dataclass(frozen=True)
class State:
    """Where a (partial) solution stands, as written: the policy continues from it."""

    todo: tuple[int, ...]  # operations not yet applied, in the problem's order
    amount: int  # the running amount as last written
    ys: tuple[tuple[int, int], ...] = ()  # (operation, y as written) of solved algebra clues
    presolve: tuple[int, ...] = ()  # algebra clues still to be solved up front
    pending: tuple[int, int] | None = None  # (operation, second factor) of a split step
    history: tuple[int, ...] = ()  # every amount written so far, the start first
    skipped: bool = False  # an operation was left out since the last step (its label is pending)


@dataclass
class Step:
    text: str
    value: int | None  # the running amount after the step (None: the policy gave up)
    error: str | None = None
    final: bool = False  # the step states the answer
    state: State | None = field(default=None, repr=False)


def equations(text: str) -> list[tuple[int, str, int, int]]:
    """Every "A op B = C" of a step's text."""
    return [(int(a), op, int(b), int(c)) for a, op, b, c in _EQUATION.findall(text)]


def holds(text: str) -> bool:
    """Whether every equation of the text is right by re-computation ("/" is exact division)."""
    return all(
        (b != 0 and a % b == 0 and a // b == c) if op == "/" else COMPUTE[op](a, b) == c
        for a, op, b, c in equations(text)
    )


@dataclass
class Policy(Writer):
    """The version-2 solution writer (see the module docstring); rates are per step, before the
    difficulty and size factors."""

    slip: float = 0.035
    operand: float = 0.02
    wrong_op: float = 0.008
    algebra: float = 0.03
    skip: float = 0.012
    truncate: float = 0.01
    version: str = "2"

    def _hit(self, base: float, prob: Problem, size: int, rng: random.Random) -> bool:
        return rng.random() < self._rate(base, prob, size)

    def next_step(self, prob: Problem, prefix: list[Step], rng: random.Random) -> Step:
        """The step after `prefix`; with probability `truncate` the policy gives up instead."""
        st = prefix[-1].state if prefix else self._start(prob, rng)
        if rng.random() < self.truncate:
            return Step(STOP_TEXT, None, "stopped", state=st)
        return self._act(prob, st, rng)

    def _start(self, prob: Problem, rng: random.Random) -> State:
        algs = tuple(i for i, op in enumerate(prob.ops) if op.kind == "alg")
        up = algs if rng.random() < 0.4 else ()
        return State(tuple(range(len(prob.ops))), prob.start, presolve=up, history=(prob.start,))

    def _act(self, prob: Problem, st: State, rng: random.Random) -> Step:
        words = _words(prob)
        if st.pending:
            i, f = st.pending
            return self._apply(prob, st, i, f, "split2", rng, words)
        if st.presolve:
            i = st.presolve[0]
            lead, y, err = self._solve(prob, i, rng)
            text = rng.choice(TEMPLATES["solve"]).format(**lead)
            return self._step(text, st, st.amount, err, replace(st, presolve=st.presolve[1:], ys=st.ys + ((i, y),)))
        if not st.todo:
            v = st.amount
            text = rng.choice(TEMPLATES["final"]).format(v=v, **words)
            return self._step(text, st, v, None, st, final=True)
        i = st.todo[0]
        if len(st.todo) > 1 and _commute(prob, st.todo[0], st.todo[1], st.amount) and rng.random() < 0.3:
            i = st.todo[1]
        if self._hit(self.skip, prob, prob.ops[i].x, rng):
            return self._act(prob, replace(st, todo=tuple(j for j in st.todo if j != i), skipped=True), rng)
        op = prob.ops[i]
        if op.kind == "alg" and i not in dict(st.ys):
            lead, y, err = self._solve(prob, i, rng)
            solved = replace(st, ys=st.ys + ((i, y),))
            if rng.random() < 0.3:  # solved and added in one step
                return self._apply(prob, solved, i, y, "merged", rng, words, lead=lead, lead_err=err)
            return self._step(rng.choice(TEMPLATES["solve"]).format(**lead), st, st.amount, err, solved)
        x = dict(st.ys)[i] if op.kind == "alg" else op.x
        if op.kind in ("mul", "div") and x in FACTORS and rng.random() < 0.4:
            f, g = FACTORS[x]
            return self._apply(prob, replace(st, pending=(i, g)), i, f, "split1", rng, words, whole=x)
        return self._apply(prob, st, i, x, op.kind, rng, words)

    def _solve(self, prob: Problem, i: int, rng: random.Random) -> tuple[dict, int, str | None]:
        """The equations solving clue i for y: (template fields, y as written, error)."""
        op, err = prob.ops[i], None
        sym, t = "-", op.c - op.b
        if self._hit(self.algebra, prob, op.c, rng):
            err = "algebra"
            if rng.random() < 0.5:
                sym, t = "+", op.c + op.b
        y = t // op.a
        if err and sym == "-":
            y += rng.choice([-1, 1])
        eq1, eq2 = f"{op.c} {sym} {op.b} = {t}", f"{t} / {op.a} = {y}"
        return {"A": op.a, "B": op.b, "C": op.c, "eq1": eq1, "eq2": eq2, "y": y}, y, err

    def _apply(self, prob, st: State, i: int, x: int, form: str, rng, words, lead=None, lead_err=None, whole=0):
        """The step applying operation i with operand x to the running amount."""
        kind, err = prob.ops[i].kind, lead_err
        a = st.amount
        earlier = [h for h in st.history[:-1] if h != a]
        if self._hit(self.operand, prob, a, rng):
            err = "operand"
            a = rng.choice(earlier) if earlier and rng.random() < 0.5 else _miscopy(a, rng)
        sym = SYMBOL[kind]
        if self._hit(self.wrong_op, prob, x, rng):
            sym, err = {"+": "*", "-": "+", "*": "+", "/": "-"}[sym], "wrong_op"
        r = true = COMPUTE[sym](a, x)  # x >= 2 for "/": divisors and split factors
        if self._hit(self.slip * (1.5 if sym == "*" else 1), prob, true, rng):
            r, err = _slipped(true, rng), "slip"
        eq = f"{a} {sym} {x} = {r}"
        verb = "multiply" if kind == "mul" else "divide"
        fields = dict(words, a=a, x=whole or x, f=x, eq=eq, verb=verb, Verb=verb.capitalize())
        if form == "merged":
            text = rng.choice(TEMPLATES["merged"]).format(**lead, eq=eq)
        else:
            text = rng.choice(TEMPLATES[form]).format(**fields)
            text = text[0].upper() + text[1:]
        done = st.pending is not None and form == "split1"
        todo = st.todo if done else tuple(j for j in st.todo if j != i)
        nxt = replace(st, todo=todo, amount=r, pending=st.pending if done else None, history=st.history + (r,))
        if not todo and not nxt.pending and not nxt.presolve and rng.random() < 0.6:
            return self._step(f"{text} The answer is \\boxed{{{r}}}.", st, r, err, nxt, final=True)
        return self._step(text, st, r, err, nxt)

    @staticmethod
    def _step(text, st: State, value, err, nxt: State, final: bool = False):
        if st.skipped:  # the step after a left-out operation carries its label
            err = err or "skip"
        return Step(text, value, err, final, replace(nxt, skipped=False))


def _words(prob: Problem) -> dict:
    pron = "she" if prob.name[-1] in "aoe" else "he"
    return {"pron": pron, "Pron": pron.capitalize(), "item": prob.item, "name": prob.name}


def _commute(prob: Problem, i: int, j: int, amount: int) -> bool:
    """Whether operations i, j (adjacent, both still to do) may be swapped on the right path."""
    a, b = prob.ops[i], prob.ops[j]
    if {a.kind, b.kind} <= {"add", "sub"}:
        return b.apply(amount) >= 0
    if a.kind == b.kind == "mul":
        return True
    return a.kind == b.kind == "div" and amount % b.x == 0


def _miscopy(v: int, rng: random.Random) -> int:
    s = str(abs(v))
    k = rng.randrange(len(s))
    d = int(s[k])
    d = d + 1 if d < 9 and (d == 0 or rng.random() < 0.5) else d - 1
    out = int(s[:k] + str(d) + s[k + 1 :])
    return -out if v < 0 else out


def _slipped(v: int, rng: random.Random) -> int:
    s = str(abs(v))
    if len(s) >= 2 and s[-1] != s[-2] and rng.random() < 0.3:
        return int(s[:-2] + s[-1] + s[-2]) * (1 if v >= 0 else -1)
    return v + rng.choice([-2, -1, 1, 2, 10, -10])


def finished(prob: Problem, steps: list[Step]) -> bool:
    """The answer is stated, or the policy gave up."""
    return bool(steps) and (steps[-1].final or steps[-1].value is None)


def final_answer(prob: Problem, steps: list[Step]) -> str | None:
    return str(steps[-1].value) if steps and steps[-1].final else None


def step_ok(prob: Problem, steps: list[Step]) -> list[bool]:
    """Per step: no error in it or before it (the prefix is still on a right path)."""
    out, ok = [], True
    for s in steps:
        ok = ok and s.error is None
        out.append(ok)
    return out


def reference_solution(prob: Problem) -> list[str]:
    """An error-free solution (every error rate 0; wording and order still drawn, seed 0)."""
    clean = Policy(slip=0, operand=0, wrong_op=0, algebra=0, skip=0, truncate=0)
    return [s.text for s in clean.sample(prob, 0)]


def pools(n_problems: int, n_samples: int, base_seed: int, policy: Policy | None = None):
    """(problem records, solution records) for n problems with n samples each."""
    return mathworld.pools(n_problems, n_samples, base_seed, policy, version=2)
