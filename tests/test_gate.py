"""The regression gate: tolerance in the metric's direction, paired tests, exit codes."""

import json
import math
import os
import shutil
from pathlib import Path

import pytest

from harness import records
from harness.cli import main
from harness.gate import bootstrap_p, mcnemar_p


def write(folder, rid, scores, direction="higher", value=None, sample_field="score"):
    rec = {
        "schema_version": records.SCHEMA_VERSION,
        "run_id": rid,
        "task": {"name": "needle", "params": {}},
        "method": {"name": "yarn", "params": {}},
        "model": {"id": "zoo:x"},
        "provenance": {},
        "metrics": {
            "accuracy": {
                "value": value if value is not None else sum(scores) / len(scores),
                "direction": direction,
                "n": len(scores),
                "sample_field": sample_field,
            }
        },
    }
    records.write(folder / "needle" / f"{rid}.json", rec, [{"id": f"s{i}", "score": s} for i, s in enumerate(scores)])


def test_mcnemar_exact():
    assert mcnemar_p([1] * 10, [1] * 10) == 1.0
    # 8 discordant pairs all one way: p = 2 * (1/2)^8
    assert math.isclose(mcnemar_p([1] * 8 + [0] * 2, [0] * 8 + [0] * 2), 2 / 256)
    assert mcnemar_p([1, 0], [0, 1]) == 1.0


def test_bootstrap_detects_a_real_shift():
    a = [0.1 * i for i in range(50)]
    assert bootstrap_p(a, [x - 1.0 for x in a]) < 0.01
    assert bootstrap_p(a, list(a)) == 1.0


def test_gate_on_itself_passes_and_a_planted_regression_fails(tmp_path, capsys):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1] * 40)
    write(base, "r2", [1, 0] * 20)
    assert main(["gate", "--baseline", str(base), "--current", str(base)]) == 0
    shutil.copytree(base, cur)
    write(cur, "r1", [0] * 30 + [1] * 10)  # accuracy 1.0 -> 0.25 on the same samples
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 1
    out = capsys.readouterr().out
    assert "1 regression" in out and "sample s0: 1 -> 0" in out


def test_noise_within_the_paired_test_does_not_fail(tmp_path, capsys):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1, 0] * 20)
    write(cur, "r1", [0, 1] * 19 + [0, 0])  # one net sample lost among 40 discordant swaps
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 0


def test_tolerance_and_direction(tmp_path):
    base, cur = tmp_path / "base", tmp_path / "cur"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"metrics": {"accuracy": {"abs": 0.5}}}))
    write(base, "r1", [1] * 40)
    write(cur, "r1", [0] * 15 + [1] * 25)  # 0.375 worse: within abs 0.5
    assert main(["gate", "--baseline", str(base), "--current", str(cur), "--rules", str(rules)]) == 0
    write(base, "r2", [1.0], direction="lower", value=3.0, sample_field=None)
    write(cur, "r2", [1.0], direction="lower", value=2.0, sample_field=None)  # lower is better: improved
    assert main(["gate", "--baseline", str(base), "--current", str(cur), "--rules", str(rules)]) == 0
    write(cur, "r2", [1.0], direction="lower", value=4.0, sample_field=None)  # without per-sample
    # values the tolerance alone decides: 1.0 worse than the baseline is beyond abs 0.5
    assert main(["gate", "--baseline", str(base), "--current", str(cur), "--rules", str(rules)]) == 1


@pytest.mark.parametrize("content", [b"{broken", b"\x00\xff", b'{"schema_version": 7}'])
def test_bad_input_exits_2_naming_the_file(tmp_path, capsys, content):
    base = tmp_path / "base"
    write(base, "r1", [1, 1])
    (base / "needle" / "evil.json").write_bytes(content)
    assert main(["gate", "--baseline", str(base), "--current", str(base)]) == 2
    assert "evil.json" in capsys.readouterr().err
    assert main(["gate", "--baseline", str(tmp_path / "nope"), "--current", str(base)]) == 2


# -- the committed reference records (issue 6 "Done when") and hostile files (issue 9, item 3) ----
RESULTS = Path(__file__).resolve().parents[1] / "results"


def test_committed_results_against_themselves_pass(capsys):
    assert main(["gate", "--baseline", str(RESULTS), "--current", str(RESULTS)]) == 0
    n = len(list(RESULTS.rglob("*.json")))
    assert f"gate: {n} matching cells" in capsys.readouterr().out


def test_a_planted_regression_in_the_committed_results_fails(tmp_path, capsys):
    cur = tmp_path / "cur"
    shutil.copytree(RESULTS, cur)
    # a yarn needle record with at least 30 correct needles (not e.g. the 10-needle 128k one)
    path = next(
        p
        for p in sorted((cur / "needle").rglob("yarn/*.json"))
        if sum(s["score"] == 1.0 for s in records.read_samples(p)) >= 30
    )
    rec, samples = records.read(path), records.read_samples(path)
    hit = [s for s in samples if s["score"] == 1.0][:30]
    for s in hit:  # 30 correct needles now missed
        s["score"] = 0.0
    m = rec["metrics"]["accuracy"]
    m["value"] = sum(s["score"] for s in samples) / len(samples)
    records.write(path, rec, samples)
    assert main(["gate", "--baseline", str(RESULTS), "--current", str(cur)]) == 1
    out = capsys.readouterr().out
    assert "1 regression" in out and "yarn" in out and f"sample {hit[0]['id']}: 1.0 -> 0.0" in out


@pytest.mark.parametrize(
    "make,problem",
    [
        (lambda d, good: (d / "t.json").write_text(good[: len(good) // 3]), "not JSON"),
        (
            lambda d, good: (d / "v.json").write_text(good.replace('"schema_version": 1', '"schema_version": 7')),
            "schema_version 7",
        ),
        (lambda d, good: (d / "b.json").write_bytes(bytes(range(256)) * 8), "binary"),
        (lambda d, good: open(d / "h.json", "wb").truncate(records.MAX_RECORD_BYTES + 1), "too large"),
        (lambda d, good: os.symlink("/etc/hostname", d / "s.json"), "symlink"),
        (lambda d, good: os.symlink("/etc", d / "linked"), "symlink"),
    ],
)
def test_hostile_files_exit_2_naming_the_file(tmp_path, capsys, make, problem):
    cur = tmp_path / "cur"
    shutil.copytree(RESULTS / "passkey", cur / "passkey")
    good = next(cur.rglob("*.json")).read_text()
    bad_dir = cur / "passkey" / "junk"
    bad_dir.mkdir()
    make(bad_dir, good)
    assert main(["gate", "--baseline", str(RESULTS), "--current", str(cur)]) == 2
    err = capsys.readouterr().err
    assert problem in err and str(bad_dir) in err and "Traceback" not in err


# -- tolerance at floating-point noise, the rule per row, comparisons of nothing (issues 21, 28) --
def write_ppl(folder, rid, value, direction="lower"):
    """A deterministic metric: no per-sample field, so the tolerance alone decides."""
    write(folder, rid, [1.0], direction=direction, value=value, sample_field=None)


def test_floating_point_noise_on_a_deterministic_metric_is_not_a_regression(tmp_path, capsys):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write_ppl(base, "r1", 3.922161581722479)  # the two values of issue 21: 1.9e-9 relative worse
    write_ppl(cur, "r1", 3.9221615891735144)
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("needle"))
    assert "tolerance only (deterministic)" in row and "holds" in row
    assert "rel 1e-06" in out and "1 changed within the rule" in out


def test_a_rules_file_cannot_narrow_the_tolerance_below_noise(tmp_path):
    base, cur = tmp_path / "base", tmp_path / "cur"
    rules = tmp_path / "rules.json"
    rules.write_text(json.dumps({"default": {"abs": 0, "rel": 0}}))
    write_ppl(base, "r1", 4.0)
    write_ppl(cur, "r1", 4.0 * (1 + 5e-7))
    assert main(["gate", "--baseline", str(base), "--current", str(cur), "--rules", str(rules)]) == 0


@pytest.mark.parametrize("direction,factor", [("lower", 1 + 1e-3), ("higher", 1 - 1e-3)])
def test_a_small_real_change_of_a_deterministic_metric_is_a_regression(tmp_path, capsys, direction, factor):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write_ppl(base, "r1", 3.9221615891735144, direction)
    write_ppl(cur, "r1", 3.9221615891735144 * factor, direction)
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 1
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("needle"))
    assert "tolerance only (deterministic)" in row and "REGRESSION" in row and "1 regression" in out


def test_the_table_names_the_paired_test_that_decided(tmp_path, capsys):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1, 0] * 20)
    write(cur, "r1", [0, 1] * 19 + [0, 0])  # worse beyond tolerance, not significant
    write(base, "r2", [0.5] * 10 + [1.5] * 10, value=1.0)
    write(cur, "r2", [0.4] * 10 + [1.4] * 10, value=0.9)  # every sample worse: significant
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 1
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("needle")]
    assert len(rows) == 2
    assert "tolerance + McNemar (exact) p < 0.05" in rows[0] and "holds" in rows[0]
    assert "tolerance + paired bootstrap p < 0.05" in rows[1] and "REGRESSION" in rows[1]


@pytest.mark.parametrize(
    "case,problem", [("empty", "holds no records"), ("missing", "is not a folder"), ("disjoint", "nothing compared")]
)
def test_a_gate_that_compares_nothing_exits_2(tmp_path, capsys, case, problem):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write_ppl(base, "r1", 4.0)
    if case == "empty":
        cur.mkdir()
    elif case == "disjoint":
        write_ppl(cur, "other", 4.0)
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("side", ["base", "cur"])
@pytest.mark.parametrize(
    "value,problem",
    [
        (float("nan"), "nan"),
        (float("inf"), "inf"),
        (float("-inf"), "-inf"),
        ("3.9", "no numeric value"),
        (None, "no numeric value"),
    ],
)
def test_a_non_finite_or_non_numeric_metric_exits_2(tmp_path, capsys, side, value, problem):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write_ppl(base, "r1", 4.0)
    write_ppl(cur, "r1", 4.0)
    path = next((tmp_path / side).rglob("r1.json"))
    rec = json.loads(path.read_text())
    rec["metrics"]["accuracy"]["value"] = value
    path.write_text(json.dumps(rec))
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 2
    err = capsys.readouterr().err
    assert "accuracy" in err and problem in err and str(path) in err and "Traceback" not in err


def test_missing_per_sample_values_of_a_paired_metric_exit_2(tmp_path, capsys):
    base, cur = tmp_path / "base", tmp_path / "cur"
    write(base, "r1", [1, 0] * 5)
    write(cur, "r1", [1, 0] * 5)
    path = next(cur.rglob("r1.json"))
    records.samples_path(path).unlink()
    assert main(["gate", "--baseline", str(base), "--current", str(cur)]) == 2
    assert "per-sample values unreadable" in capsys.readouterr().err


@pytest.mark.parametrize(
    "rules,problem",
    [
        ({"default": {"rel": "x"}}, "default.rel must be a finite number"),
        ({"default": {"rel": -1}}, "default.rel must be a finite number"),
        ({"metrics": [1]}, "metrics must map"),
        ({"metrics": {"accuracy": 0.1}}, "metrics.accuracy must be a mapping"),
        ({"alpha": 2}, "alpha must be a number in (0, 1]"),
        ({"tolerance": 1}, "unknown key(s) ['tolerance']"),
    ],
)
def test_malformed_rules_exit_2(tmp_path, capsys, rules, problem):
    base = tmp_path / "base"
    write_ppl(base, "r1", 4.0)
    path = tmp_path / "rules.json"
    path.write_text(json.dumps(rules))
    assert main(["gate", "--baseline", str(base), "--current", str(base), "--rules", str(path)]) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
