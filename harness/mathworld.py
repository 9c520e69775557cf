"""A self-contained synthetic math world for process reward models: seeded multi-step
arithmetic/algebra word problems with exact answers, and a policy that writes step-by-step
solutions with realistic step errors.

THE POLICY IS A DOCUMENTED STOCHASTIC PROGRAM, NOT A LANGUAGE MODEL. Training a zoo LM to write
these solutions was too slow on the shared 2-core machine, so `Policy` below samples each step
from an explicit error model; results on this world are numbers for this toy world only.

Problem: a start amount, then 2-6 operations (level 1-5), each a sentence with a verbal cue:
"buys 7 more" (+), "gives away 5" (-), "ends up with 3 times as many" (x), "shares them equally
among 4 friends and keeps one share" (/, always divisible), or an algebra clue "gets y more, where
3y + 4 = 19" (+ y). The answer is the final amount (an integer).

Policy step errors (per step, each with its own rate; rates grow with the operands' size and are
scaled by a per-problem difficulty drawn log-normally, so some problems are hard for the policy):
arithmetic slip (result off by ±1, ±2, ±10 or two digits swapped), wrong operation (the cue's
symbol replaced), misread operand (±1 or another number of the problem; the quoted cue keeps the
true number half the time), carry error (the previous result copied wrong), a wrong algebra
solution, and giving up (1 % per step: a last step without an answer). After an error the policy continues
correctly from what it wrote, so errors propagate; two errors rarely cancel (a right answer with a
flawed process). `complete(prefix)` continues a partial solution: the Monte Carlo completer for
Math-Shepherd / PAV labels and the proposal distribution of PRM-guided beam search.

Seeds: problems and samples below 1,000,000 are training-side; evaluation uses seeds at or above
it (`EVAL_SEED_BASE`), so fits never see evaluation problems."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

EVAL_SEED_BASE = 1_000_000
STOP_TEXT = "I am not sure how to finish this."
NAMES = ["Ava", "Ben", "Cleo", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivo", "Juno", "Kai", "Lena", "Milo", "Nia"]
ITEMS = ["apples", "marbles", "stamps", "coins", "shells", "cards", "pencils", "beads", "stickers", "books"]
SYMBOL = {"add": "+", "sub": "-", "mul": "*", "div": "/", "alg": "+"}


@dataclass
class Op:
    kind: str  # add, sub, mul, div, alg
    x: int  # operand (for alg: the solution y of a*y + b = c)
    a: int = 0  # alg coefficients
    b: int = 0
    c: int = 0

    def apply(self, v: int) -> int:
        if self.kind == "sub":
            return v - self.x
        if self.kind == "mul":
            return v * self.x
        if self.kind == "div":
            return v // self.x if self.x else v  # integer division: a misread divisor truncates
        return v + self.x

    def sentence(self, who: str) -> str:
        if self.kind == "add":
            return f"Then {who} buys {self.x} more."
        if self.kind == "sub":
            return f"Then {who} gives away {self.x}."
        if self.kind == "mul":
            return f"Then {who} ends up with {self.x} times as many."
        if self.kind == "div":
            return f"Then {who} shares them equally among {self.x} friends and keeps one share."
        return f"Then {who} gets y more, where {self.a}y + {self.b} = {self.c}."


@dataclass
class Problem:
    id: str
    seed: int
    name: str
    item: str
    start: int
    ops: list[Op]
    level: int
    difficulty: float  # the policy's per-problem error multiplier

    @property
    def answer(self) -> int:
        v = self.start
        for op in self.ops:
            v = op.apply(v)
        return v

    @property
    def text(self) -> str:
        body = " ".join(op.sentence("she" if self.name[-1] in "aoe" else "he") for op in self.ops)
        return f"{self.name} has {self.start} {self.item}. {body} How many {self.item} are there at the end?"

    def record(self) -> dict:
        return {
            "id": self.id,
            "problem": self.text,
            "answer": str(self.answer),
            "level": self.level,
            "subject": "synthetic arithmetic",
        }


def problem(seed: int) -> Problem:
    rng = random.Random(seed)
    level = rng.randint(1, 5)
    v = start = rng.randint(3, 10 + 6 * level)
    ops = []
    for _ in range(level + 1):
        kinds = ["add", "sub", "mul", "alg"] + (["div"] * 2)
        while True:
            kind = rng.choice(kinds)
            if kind == "add":
                op = Op(kind, rng.randint(2, 5 + 5 * level))
            elif kind == "sub":
                if v < 4:
                    continue
                op = Op(kind, rng.randint(1, v - 2))
            elif kind == "mul":
                if v > 60:
                    continue
                op = Op(kind, rng.randint(2, 4 if level < 3 else 6))
            elif kind == "div":
                divs = [d for d in range(2, 10) if v % d == 0 and v // d >= 2]
                if not divs:
                    continue
                op = Op(kind, rng.choice(divs))
            else:
                y, a = rng.randint(1, 9), rng.randint(2, 5)
                b = rng.randint(1, 12)
                op = Op(kind, y, a, b, a * y + b)
            break
        ops.append(op)
        v = op.apply(v)
    difficulty = math.exp(rng.gauss(0.0, 0.8))
    return Problem(f"w{seed}", seed, rng.choice(NAMES), rng.choice(ITEMS), start, ops, level, difficulty)


def problems(n: int, base_seed: int) -> list[Problem]:
    return [problem(base_seed + i) for i in range(n)]


@dataclass
class Step:
    text: str
    value: int | None  # the amount the step wrote (what later steps build on)
    error: str | None = None


@dataclass
class Policy:
    """The stochastic solution writer (see the module docstring). Rates are per step, before the
    per-problem difficulty and size factors."""

    slip: float = 0.05
    wrong_op: float = 0.025
    misread: float = 0.025
    carry: float = 0.02
    algebra: float = 0.06
    truncate: float = 0.01
    version: str = "1"

    def _rate(self, base: float, prob: Problem, size: int) -> float:
        return min(0.9, base * prob.difficulty * (1 + math.log10(1 + abs(size)) / 2))

    def step(self, prob: Problem, i: int, prev: int, rng: random.Random) -> Step:
        """Step i (0-based) applied to the previously written amount `prev`."""
        op, who = prob.ops[i], "she" if prob.name[-1] in "aoe" else "he"
        cue = op.sentence(who).removeprefix("Then ").rstrip(".")
        err, v, x, kind = None, prev, op.x, op.kind
        if i > 0 and rng.random() < self._rate(self.carry, prob, prev):
            v, err = prev + rng.choice([-2, -1, 1, 2, 10]), "carry"
        if kind == "alg":
            if rng.random() < self._rate(self.algebra, prob, op.c):
                x, err = (op.c + op.b) // op.a if rng.random() < 0.5 else x + rng.choice([-1, 1]), "algebra"
            pre = f"Solve {op.a}y + {op.b} = {op.c}: y = ({op.c} - {op.b}) / {op.a} = {x}. "
        else:
            pre = ""
            if rng.random() < self._rate(self.misread, prob, x):
                shown = x
                others = [o.x for o in prob.ops if o.x != x and o.kind != "alg"] + [prob.start]
                x = rng.choice([x - 1, x + 1] + others[:2]) if x > 1 else x + 1
                err = "misread"
                if rng.random() < 0.5:
                    cue = cue.replace(str(shown), str(x), 1)
            if rng.random() < self._rate(self.wrong_op, prob, x):
                kind = {"add": "mul", "sub": "add", "mul": "add", "div": "sub"}[kind]
                err = "wrong_op"
        result = true = Op(kind, x).apply(v)
        if rng.random() < self._rate(self.slip, prob, true):
            s = str(abs(true))
            if len(s) >= 2 and rng.random() < 0.3 and s[-1] != s[-2]:
                result = int(s[:-2] + s[-1] + s[-2]) * (1 if true >= 0 else -1)
            else:
                result = true + rng.choice([-2, -1, 1, 2, 10, -10])
            err = "slip"
        text = f"{pre}{cue[0].upper()}{cue[1:]}: {v} {SYMBOL[kind]} {x} = {result}."
        return Step(text, result, err)

    def next_step(self, prob: Problem, prefix: list[Step], rng: random.Random) -> Step:
        """The next step after `prefix` (the last one states the answer). With probability
        `truncate` the policy gives up instead: a final step without an answer."""
        i = len(prefix)
        if rng.random() < self.truncate:
            return Step(STOP_TEXT, None, "stopped")
        s = self.step(prob, i, prefix[-1].value if prefix else prob.start, rng)
        if i == len(prob.ops) - 1:
            s = Step(s.text + f" The answer is \\boxed{{{s.value}}}.", s.value, s.error)
        return s

    def complete(self, prob: Problem, prefix: list[Step], rng: random.Random) -> list[Step]:
        """Continue a partial solution to the end (prefix steps are kept as written)."""
        steps = list(prefix)
        while not finished(prob, steps):
            steps.append(self.next_step(prob, steps, rng))
        return steps

    def sample(self, prob: Problem, seed: int) -> list[Step]:
        return self.complete(prob, [], random.Random(seed))


def finished(prob: Problem, steps: list[Step]) -> bool:
    """All operations done, or the policy gave up."""
    return len(steps) == len(prob.ops) or bool(steps and steps[-1].value is None)


def final_answer(prob: Problem, steps: list[Step]) -> str | None:
    return str(steps[-1].value) if len(steps) == len(prob.ops) and steps[-1].value is not None else None


def solution_record(prob: Problem, steps: list[Step], idx: int) -> dict:
    return {
        "problem_id": prob.id,
        "sample_idx": idx,
        "steps": [s.text for s in steps],
        "solution": "\n\n".join(s.text for s in steps),
        "answer": final_answer(prob, steps),
        "step_errors": [s.error for s in steps],
    }


def sample_seed(prob: Problem, idx: int, salt: int = 0) -> int:
    return (prob.seed * 1009 + idx * 7919 + salt * 104729) % (2**62)


def pools(n_problems: int, n_samples: int, base_seed: int, policy: Policy | None = None):
    """(problem records, solution records) for n problems with n samples each."""
    policy = policy or Policy()
    probs = problems(n_problems, base_seed)
    sols = [solution_record(p, policy.sample(p, sample_seed(p, j)), j) for p in probs for j in range(n_samples)]
    return [p.record() for p in probs], sols
