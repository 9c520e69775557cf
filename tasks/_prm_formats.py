"""Input files of math_prm_bon and importers for public best-of-N dumps (anchors-prm §5).

The harness format (documented in the README, section "MATH PRM best-of-N"):
- problems JSONL, one per line: {"id", "problem", "answer", "level"?, "subject"?}
  ("unique_id" is accepted for "id"; a missing "answer" is taken from the last \\boxed of "solution");
- solutions JSONL, one per line: {"problem_id", "steps": [str], "solution"? (full text; default the
  steps joined by a blank line), "answer"? (the extracted final answer; default: extracted from the
  text), "correct"? (a given 0/1 label, used only when the problem has no gold answer),
  "scores"? ({name: [step scores]} precomputed by an external scorer), "sample_idx"?}.
Importers convert the other layouts into these dicts in memory. Every error names the file and
line (1-based)."""

from __future__ import annotations

import json
import re

from harness import data
from harness.errors import UserError
from harness.mathgrade import extract_answer

FORMATS = ("harness", "prm800k", "rlhflow", "pqm", "sal")


def _jsonl(path: str, what: str) -> list[tuple[int, dict]]:
    rows = []
    for i, line in enumerate(data.read_text(path, what).splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{what}: {path} line {i}: not valid JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise UserError(f"{what}: {path} line {i}: expected a JSON object")
        rows.append((i, row))
    return rows


def _need(row: dict, keys, path: str, line: int, what: str):
    for k in keys:
        if k not in row:
            raise UserError(f"{what}: {path} line {line}: missing field {k!r} (has {', '.join(sorted(row)) or 'none'})")


def _steps(value, path, line, what) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(s, str) for s in value):
        raise UserError(f"{what}: {path} line {line}: 'steps' must be a list of strings")
    return value


def split_steps(text: str, sep: str) -> list[str]:
    """Steps of a solution text; 'step_k' splits before 'Step k:' markers (PQM / Math-Shepherd)."""
    if sep == "step_k":
        parts = re.split(r"(?=Step \d+:)", text)
    else:
        parts = text.split(sep)
    return [p.strip() for p in parts if p.strip()]


def load_problems(path: str) -> list[dict]:
    out, seen = [], set()
    for line, row in _jsonl(path, "problems"):
        row = dict(row)
        if "id" not in row and "unique_id" in row:
            row["id"] = row["unique_id"]
        if "answer" not in row and "solution" in row:
            row["answer"] = extract_answer(row["solution"])
        _need(row, ("id", "problem"), path, line, "problems")
        pid = str(row["id"])
        if pid in seen:
            raise UserError(f"problems: {path} line {line}: duplicate id {pid!r}")
        seen.add(pid)
        level = row.get("level")
        if isinstance(level, str) and level.startswith("Level "):
            level = level[6:]
        out.append(
            {
                "id": pid,
                "problem": str(row["problem"]),
                "answer": None if row.get("answer") is None else str(row["answer"]),
                "level": level,
                "subject": row.get("subject"),
            }
        )
    return out


def solution(pid, steps, text=None, answer=None, correct=None, scores=None) -> dict:
    """A solution record as the task reads it (answer extracted from the text unless given)."""
    text = text if text is not None else "\n\n".join(steps)
    return {
        "problem_id": pid,
        "steps": steps,
        "solution": text,
        "answer": answer if answer is not None else extract_answer(text),
        "correct": None if correct is None else bool(correct),
        "scores": scores or {},
    }


def load_harness(path: str, problems: list[dict]) -> dict[str, list[dict]]:
    ids = {p["id"] for p in problems}
    pools: dict[str, list[dict]] = {}
    for line, row in _jsonl(path, "solutions"):
        _need(row, ("problem_id",), path, line, "solutions")
        pid = str(row["problem_id"])
        if pid not in ids:
            raise UserError(f"solutions: {path} line {line}: problem_id {pid!r} is not in the problems file")
        if "steps" in row:
            steps = _steps(row["steps"], path, line, "solutions")
        elif "solution" in row:
            steps = split_steps(row["solution"], "\n\n")
        else:
            raise UserError(f"solutions: {path} line {line}: needs 'steps' or 'solution'")
        scores = row.get("scores") or {}
        if not isinstance(scores, dict):
            raise UserError(f"solutions: {path} line {line}: 'scores' must be an object name -> [step scores]")
        ans = row.get("answer")
        pools.setdefault(pid, []).append(
            solution(pid, steps, row.get("solution"), None if ans is None else str(ans), row.get("correct"), scores)
        )
    return pools


def _by_text(problems: list[dict]) -> dict[str, str]:
    return {p["problem"].strip(): p["id"] for p in problems}


def load_prm800k(path: str, problems: list[dict]) -> dict[str, list[dict]]:
    """PRM800K scored samples: {problem, answer|given_answer, is_correct, prm_score, orm_score, steps?};
    matched to the problems file by problem text; the given scores become scores['prm800k_prm'/'prm800k_orm']."""
    index, pools = _by_text(problems), {}
    for line, row in _jsonl(path, "solutions"):
        _need(row, ("problem",), path, line, "solutions (prm800k)")
        pid = index.get(str(row["problem"]).strip())
        if pid is None:
            raise UserError(f"solutions (prm800k): {path} line {line}: problem text not found in the problems file")
        steps = row.get("steps") or split_steps(row.get("generation") or row.get("answer_text") or "", "\n")
        if isinstance(steps, str):
            steps = split_steps(steps, "\n")
        ans = row.get("answer", row.get("given_answer"))
        scores = {
            k: [float(row[f"{k[8:]}_score"])]
            for k in ("prm800k_prm", "prm800k_orm")
            if row.get(f"{k[8:]}_score") is not None
        }
        pools.setdefault(pid, []).append(
            solution(pid, list(steps), None, None if ans is None else str(ans), row.get("is_correct"), scores)
        )
    return pools


def load_rlhflow(path: str, problems: list[dict] | None, step_sep: str):
    """RLHFlow test sets: a row per problem {prompt, answers: [str], label: [0/1]}. Without a problems
    file the problems come from the rows (no gold answer: the given labels grade)."""
    rows = _jsonl(path, "solutions (rlhflow)")
    index = _by_text(problems) if problems else {}
    probs, pools = [], {}
    for line, row in rows:
        _need(row, ("prompt", "answers"), path, line, "solutions (rlhflow)")
        labels = row.get("label", row.get("labels"))
        if labels is not None and len(labels) != len(row["answers"]):
            raise UserError(
                f"solutions (rlhflow): {path} line {line}: {len(labels)} labels for {len(row['answers'])} answers"
            )
        pid = index.get(str(row["prompt"]).strip()) if problems else f"rlhflow-{line}"
        if pid is None:
            raise UserError(f"solutions (rlhflow): {path} line {line}: prompt not found in the problems file")
        if not problems:
            probs.append({"id": pid, "problem": str(row["prompt"]), "answer": None, "level": None, "subject": None})
        for j, text in enumerate(row["answers"]):
            text = text.replace("ки", "")
            pools.setdefault(pid, []).append(
                solution(
                    pid,
                    split_steps(text, step_sep.replace("ки", "") or "\n"),
                    text,
                    correct=None if labels is None else labels[j],
                )
            )
    return (problems or probs), pools


def load_pqm(path: str, problems: list[dict]) -> dict[str, list[dict]]:
    """PQM BoN dumps: a JSON list [{question, responses: [{text}]}], paired with the problems file by order."""
    text = data.read_text(path, "solutions (pqm)")
    try:
        items = json.loads(text)
    except json.JSONDecodeError as e:
        raise UserError(f"solutions (pqm): {path} line {e.lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(items, list):
        raise UserError(f"solutions (pqm): {path} line 1: expected a JSON list of questions")
    if len(items) != len(problems):
        raise UserError(
            f"solutions (pqm): {path}: {len(items)} questions but {len(problems)} problems (paired by order)"
        )
    pools = {}
    for k, (p, item) in enumerate(zip(problems, items)):
        if not isinstance(item, dict) or not isinstance(item.get("responses", []), list):
            raise UserError(f"solutions (pqm): {path}: question {k}: expected {{question, responses: [...]}}")
        for r in item.get("responses", []):
            if isinstance(r, dict) and not isinstance(r.get("text"), str):
                raise UserError(f"solutions (pqm): {path}: question {k}: a response has no 'text'")
            t = r["text"] if isinstance(r, dict) else str(r)
            pools.setdefault(p["id"], []).append(solution(p["id"], split_steps(t, "step_k"), t))
    return pools


def load_sal(path: str):
    """search-and-learn outputs: rows {problem, answer, completions: [str], scores?: [[float]]}; the
    problems come from the rows; given per-step scores become scores['sal']."""
    probs, pools = [], {}
    for line, row in _jsonl(path, "solutions (sal)"):
        _need(row, ("problem", "answer", "completions"), path, line, "solutions (sal)")
        pid = str(row.get("unique_id", f"sal-{line}"))
        probs.append(
            {
                "id": pid,
                "problem": row["problem"],
                "answer": str(row["answer"]),
                "level": row.get("level"),
                "subject": row.get("subject"),
            }
        )
        scores = row.get("scores") or [None] * len(row["completions"])
        for text, sc in zip(row["completions"], scores):
            pools.setdefault(pid, []).append(
                solution(pid, split_steps(text, "\n\n"), text, scores={"sal": [float(x) for x in sc]} if sc else {})
            )
    return probs, pools


def load(fmt: str, problems_path: str | None, solutions_path: str, step_sep: str = "\n\n"):
    """(problems, pools by problem id) from local files in one of FORMATS."""
    if fmt not in FORMATS:
        raise UserError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    problems = load_problems(problems_path) if problems_path else None
    if fmt == "sal":
        return load_sal(solutions_path)
    if fmt == "rlhflow":
        return load_rlhflow(solutions_path, problems, step_sep)
    if problems is None:
        raise UserError(f"format {fmt} needs a problems file (task argument problems=FILE)")
    loader = {"harness": load_harness, "prm800k": load_prm800k, "pqm": load_pqm}[fmt]
    return problems, loader(solutions_path, problems)
