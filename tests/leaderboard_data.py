"""Records the leaderboard tests (test_leaderboard*.py) read: the committed long-context records
copied, one small record set per other family, and every kind of hostile file. A test file binds
the `results` fixture with `results = leaderboard_data.results`."""

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from harness import records
from harness.leaderboard import loader

ROOT = Path(__file__).resolve().parents[1]
APP = str(Path(loader.__file__).with_name("app.py"))
EVIL = "<img src=x onerror=alert(1)>**bold**[link](javascript:alert(1))"


def record(
    task,
    method,
    metrics,
    main,
    family="kv",
    params=None,
    details=None,
    model="zoo:tiny-llama",
    seed=0,
    kind="lm",
    calibrated=True,
    method_params=None,
):
    return {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": records.sha256_text(f"{task}{method}{params}{method_params}{seed}{model}")[:16],
        "task": {"name": task, "version": "1", "params": params or {}, "alias": None},
        "method": {
            "name": method,
            "params": {method: dict(method_params or {})},
            "components": [{"name": method, "kind": kind, "family": family}],
        },
        "model": {"id": model, "zoo": model.startswith("zoo:"), "label": "tiny"},
        "seed": seed,
        "limit": None,
        "main_metric": main,
        "metrics": metrics,
        "details": details or {},
        "provenance": {"calibrated": calibrated, "started": "2026-11-26T00:00:00+00:00", "git_commit": "abc"},
    }


def metric(value, direction="higher", unit="", sample_field=None, n=10):
    m = {"value": value, "direction": direction, "unit": unit, "n": n}
    return dict(m, sample_field=sample_field) if sample_field else m


def put(root: Path, rec: dict, samples=None):
    path = records.record_path(
        root, {"task": rec["task"], "model": rec["model"], "method": rec["method"]}, rec["run_id"]
    )
    records.write(path, rec, samples or [{"id": f"s{i}", "score": 1.0} for i in range(3)])
    return path


def family_records(root: Path) -> None:
    """One record shape per family, as inferred from the issues (kv 4, spec 5, prm 7, video 8)."""
    for method, q in (("snapkv", 0.9), ("streaming_llm", 0.6)):
        pareto = [
            {
                "budget": b,
                "kept_fraction": b,
                "needle_accuracy": min(1.0, q * (0.5 + b)),
                "ppl_ratio": 1 + (1 - b) * (1.2 - q),
            }
            for b in (0.1, 0.25, 0.5, 0.75)
        ]
        put(
            root,
            record(
                "kv_compression",
                method,
                {
                    "needle_accuracy_at_memory": metric(min(1.0, q * 0.75)),  # its 0.25 row
                    "needle_accuracy": metric(q),
                    "kept_fraction": metric(0.25, "lower"),
                    "ppl_ratio": metric(1.1, "lower"),
                },
                "needle_accuracy_at_memory",
                details={"pareto": pareto, "ranked_row": {"budget": "0.25", "kv_bytes_fraction": 0.25}},
            ),
        )
    for method, tau in (("sps", 2.4), ("autoregressive", 1.0)):
        for temp in (0, 1):
            put(
                root,
                record(
                    "spec_acceptance",
                    method,
                    {"tau": metric(tau - temp * 0.2), "speedup": metric(tau / 1.5), "acceptance_rate": metric(0.6)},
                    "tau",
                    family="spec",
                    params={"temperature": temp},
                ),
            )
    for method, base in (("prm_min", 0.4), ("majority", 0.35)):
        ms = {}
        for n in (1, 2, 4, 8):
            ms[f"accuracy@{n}"] = metric(base + 0.05 * n)
            ms[f"majority@{n}"] = metric(0.3 + 0.03 * n)
            ms[f"pass@{n}"] = metric(0.5 + 0.05 * n)
        put(
            root,
            record(
                "math_prm_bon",
                method,
                ms,
                "accuracy@8",
                family="prm",
                kind="step_scorer",
                model="none",
                calibrated=method != "prm_min",
            ),
        )
    for method, s in (("synthetic_videos", 0.9), ("noisy_videos", 0.5)):
        for dim in ("temporal_flickering", "subject_consistency", "dynamic_degree_proxy"):
            put(
                root,
                record(
                    f"vbench_{dim}", method, {dim: metric(s)}, dim, family="video", kind="video_source", model="none"
                ),
            )


COPIED = ("needle", "passkey", "perplexity")  # committed long-context records; the other families'
# shapes come from family_records, so counts stay fixed


@pytest.fixture
def results(tmp_path):
    root = tmp_path / "results"
    for task in COPIED:
        shutil.copytree(ROOT / "results" / task, root / task)
    family_records(root)
    return root


def committed_count() -> int:
    return sum(1 for t in COPIED for p in (ROOT / "results" / t).rglob("*.json"))


def hostile(root: Path, outside: Path) -> dict[str, int]:
    """Every kind of bad file; returns the expected skip count per reason."""
    bad = root / "needle" / "junk"
    bad.mkdir(parents=True)
    good = next((ROOT / "results").rglob("*.json")).read_text()
    (bad / "truncated.json").write_text(good[: len(good) // 2])
    (bad / "old.json").write_text(good.replace('"schema_version": 1', '"schema_version": 0'))
    (bad / "binary.json").write_bytes(bytes(range(256)) * 64)
    with open(bad / "huge.json", "wb") as f:  # sparse: never read, refused by its size
        f.truncate(loader.MAX_RECORD_BYTES + 1)
    (bad / "list.json").write_text("[1, 2, 3]")
    (bad / "shape.json").write_text(json.dumps(dict(json.loads(good), metrics={"accuracy": 3})))
    outside.mkdir(exist_ok=True)
    (outside / "secret.json").write_text(good)
    os.symlink(outside / "secret.json", bad / "link.json")
    os.symlink(outside, bad / "linked_folder")
    (bad / ".r.json.abc.tmp").write_text(good[:100])
    (bad / "notes.txt").write_text(EVIL)
    return {
        "not JSON": 1,
        "schema version": 1,
        "binary": 1,
        "too large": 1,
        "not a record": 1,
        "malformed record": 1,
        "symlink": 2,
        "temporary file": 1,
        "foreign file": 1,
    }


# -- reading the app's page under AppTest ------------------------------------------------------------
_SPLIT = re.compile(r"(?<!\\)\|")


def plain(text: str) -> str:
    """Markdown-escaped text as the page shows it."""
    return re.sub(r"\\(.)", r"\1", text)


def walk(node):
    """The app's elements in page order."""
    kids = getattr(node, "children", None)
    if kids is not None and not hasattr(node, "value"):
        for k in sorted(kids):
            yield from walk(kids[k])
    else:
        yield node


def md_rows(text: str) -> list[dict] | None:
    """A Markdown table's rows (raw cells, as written), or None when `text` is not one."""
    lines = [line for line in str(text).strip().splitlines() if line.startswith("|")]
    if len(lines) < 2 or not re.fullmatch(r"\|(:?-+:?\|)+", lines[1].replace(" ", "")):
        return None
    cells = lambda line: [c.strip() for c in _SPLIT.split(line.strip())[1:-1]]  # noqa: E731
    head = [plain(c) for c in cells(lines[0])]
    return [dict(zip(head, cells(line))) for line in lines[2:]]


def boards(at) -> dict[str, list[dict]]:
    """Ranking tables by the subheader above them: rows of raw cells (markdown as written), from
    markdown tables or st.table frames (the app before issue 29)."""
    out, head = {}, None
    for el in walk(at.main):
        kind = getattr(el, "type", "")
        if kind == "subheader":
            head = plain(el.value)
        elif kind == "table" and head:
            frame = el.value
            out[head] = [
                {"rank": str(i), **{str(k): str(v) for k, v in row.items()}}
                for i, row in zip(frame.index, frame.to_dict("records"))
            ]
        elif kind == "markdown" and head and (rows := md_rows(el.value)) and "rank" in rows[0]:
            out[head] = rows
    return out


def label(row: dict) -> str:
    """A ranking row's configuration (the method column of the app before issue 29)."""
    return plain(row.get("configuration", row.get("method", "")))
