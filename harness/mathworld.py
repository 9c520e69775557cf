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
it (`EVAL_SEED_BASE`), so fits never see evaluation problems.

Versions: this module is world version 1; harness.mathworld2 is version 2 (steps that show their
arithmetic, varied correct solutions). `world(version)` is the one place every reader of the world
(the task's pools and oracle, the verifiers' fit stages, the step-label sources, beam search) gets
its module from, so all of them see the same version; both modules offer the same names."""

from __future__ import annotations

import math
import random
import re
import sys
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
    version: int = 1  # the world it belongs to (world_of)

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


def draw_ops(rng: random.Random, level: int, v: int, kinds: list[str], add_hi: int, mul_cap: int, mul_hi: int):
    """level + 1 operations from the start amount v, each drawn from `kinds` until it fits: adds
    up to add_hi, subtractions leaving at least 2, multipliers up to mul_hi of amounts up to
    mul_cap, exact divisions leaving at least 2, algebra clues with y in 1-9."""
    ops = []
    for _ in range(level + 1):
        while True:
            kind = rng.choice(kinds)
            if kind == "add":
                op = Op(kind, rng.randint(2, add_hi))
            elif kind == "sub":
                if v < 4:
                    continue
                op = Op(kind, rng.randint(1, v - 2))
            elif kind == "mul":
                if v > mul_cap:
                    continue
                op = Op(kind, rng.randint(2, mul_hi))
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
    return ops


def problem(seed: int) -> Problem:
    rng = random.Random(seed)
    level = rng.randint(1, 5)
    v = start = rng.randint(3, 10 + 6 * level)
    kinds = ["add", "sub", "mul", "alg"] + (["div"] * 2)
    ops = draw_ops(rng, level, v, kinds, 5 + 5 * level, 60, 4 if level < 3 else 6)
    difficulty = math.exp(rng.gauss(0.0, 0.8))
    return Problem(f"w{seed}", seed, rng.choice(NAMES), rng.choice(ITEMS), start, ops, level, difficulty)


def problems(n: int, base_seed: int) -> list[Problem]:
    return [problem(base_seed + i) for i in range(n)]


@dataclass
class Step:
    text: str
    value: int | None  # the amount the step wrote (what later steps build on)
    error: str | None = None


class Writer:
    """What the worlds' policies share: next_step(prob, prefix, rng) is theirs; completing and
    sampling run it until the problem's world says the solution is finished."""

    def complete(self, prob: Problem, prefix: list, rng: random.Random) -> list:
        """Continue a partial solution to the end (prefix steps are kept as written)."""
        steps = list(prefix)
        while not world_of(prob).finished(prob, steps):
            steps.append(self.next_step(prob, steps, rng))
        return steps

    def sample(self, prob: Problem, seed: int) -> list:
        return self.complete(prob, [], random.Random(seed))

    @staticmethod
    def _rate(base: float, prob: Problem, size: int) -> float:
        """A per-step error rate: the base rate grown by the problem's difficulty and the operand's size."""
        return min(0.9, base * prob.difficulty * (1 + math.log10(1 + abs(size)) / 2))


@dataclass
class Policy(Writer):
    """The stochastic solution writer (see the module docstring). Rates are per step, before the
    per-problem difficulty and size factors."""

    slip: float = 0.05
    wrong_op: float = 0.025
    misread: float = 0.025
    carry: float = 0.02
    algebra: float = 0.06
    truncate: float = 0.01
    version: str = "1"

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
        "answer": world_of(prob).final_answer(prob, steps),
        "step_errors": [s.error for s in steps],
    }


def sample_seed(prob: Problem, idx: int, salt: int = 0) -> int:
    return (prob.seed * 1009 + idx * 7919 + salt * 104729) % (2**62)


def pools(n_problems: int, n_samples: int, base_seed: int, policy=None, version: int = 1):
    """(problem records, solution records) for n problems of world `version` with n samples each
    (by its Policy unless one is given)."""
    w = world(version)
    policy = policy or w.Policy()
    probs = w.problems(n_problems, base_seed)
    sols = [solution_record(p, policy.sample(p, sample_seed(p, j)), j) for p in probs for j in range(n_samples)]
    return [p.record() for p in probs], sols


def step_ok(prob: Problem, steps: list[Step]) -> list[bool]:
    """Per step: the amount it wrote equals the error-free amount after that operation."""
    gold, v = [], prob.start
    for op in prob.ops:
        v = op.apply(v)
        gold.append(v)
    return [s.value is not None and i < len(gold) and s.value == gold[i] for i, s in enumerate(steps)]


def reference_solution(prob: Problem) -> list[str]:
    """The error-free solution (the policy with every error rate at 0)."""
    clean = Policy(slip=0, wrong_op=0, misread=0, carry=0, algebra=0, truncate=0)
    return [s.text for s in clean.sample(prob, 0)]


VERSIONS = (1, 2)


def world(version: int = 1):
    """The module of world `version` (see the module docstring): problem(seed), problems(n, base),
    Policy (sample, complete, next_step), finished, final_answer, step_ok, reference_solution,
    solution_record, pools, sample_seed, EVAL_SEED_BASE."""
    if version == 1:
        return sys.modules[__name__]
    if version == 2:
        from harness import mathworld2

        return mathworld2
    raise ValueError(f"world version must be one of {', '.join(map(str, VERSIONS))}, not {version}")


def world_of(prob: Problem):
    return world(prob.version)


def lookup(record: dict) -> Problem | None:
    """The world problem a problem record was made from (by its id "w<seed>" or "w2-<seed>",
    checked against its text), or None when it is not a world problem."""
    m = re.fullmatch(r"w(2-)?(\d+)", str(record.get("id")))
    if not m:
        return None
    prob = world(2 if m.group(1) else 1).problem(int(m.group(2)))
    return prob if prob.text == record.get("problem") else None
