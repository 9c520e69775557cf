"""`harness report`: the method x length table is the records' own numbers, regrouped."""

import pytest

from harness import cli, report, runner


@pytest.fixture(scope="module")
def needle_records(tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("results")
    cells = runner.resolve(
        ["needle", "perplexity"],
        ["baseline", "pi"],
        tiny_model,
        {
            "needle.context_length": "96,128",
            "depths": "2",
            "samples_per_depth": "2",
            "perplexity.context_length": "64,96",
            "n_tokens": "300",
        },
        {"pi.factor": "2"},
    )
    runner.evaluate(cells, device="cpu", out=out)
    return out


def test_table_regroups_the_grid_by_length(needle_records):
    recs = report.load(needle_records, "needle", None)
    lengths, rows = report.table(recs, "accuracy")
    assert lengths == [96, 128] and set(rows) == {"baseline", "pi"}
    for rec in recs:
        for L in lengths:
            cells = [c for c in rec["details"]["grid"] if c["context_length"] == L]
            expected = sum(c["accuracy"] * c["n"] for c in cells) / sum(c["n"] for c in cells)
            assert rows[rec["method"]["name"]][L].value == pytest.approx(expected)


def test_perplexity_columns_come_from_per_length_metrics(needle_records):
    recs = report.load(needle_records, "perplexity", None)
    text = report.markdown("perplexity", recs)
    assert text.splitlines()[0] == "| method | 64 | 96 |"
    pi = next(r for r in recs if r["method"]["name"] == "pi")
    assert (
        f"{pi['metrics']['perplexity@96']['value']:.2f}" in text
        or f"{pi['metrics']['perplexity@96']['value']:.3g}" in text
    )


def test_heatmap_png_and_cli(needle_records, tmp_path, capsys):
    png = tmp_path / "h.png"
    assert cli.main(["report", "--task", "needle", "--results", str(needle_records), "--heatmaps", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| baseline |" in capsys.readouterr().out
    assert cli.main(["report", "--task", "passkey", "--results", str(needle_records)]) == 2


def test_unreadable_records_are_skipped(needle_records, tmp_path):
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(needle_records, copy)
    next(copy.glob("needle/*/*/*.json")).write_text("{truncated")
    recs = report.load(copy, "needle", None)
    assert len(recs) == 1


def _rec(method, params, seed, value, task_params=None):
    return {
        "method": {"name": method, "params": {method: params}, "components": []},
        "task": {"name": "t", "params": task_params or {}},
        "model": {"id": "zoo:m"},
        "seed": seed,
        "limit": None,
        "metrics": {"m": {"value": value}},
        "provenance": {"calibrated": True},
    }


def test_seeds_of_one_configuration_share_a_row_and_configurations_do_not():
    recs = [_rec("a", {"k": 1}, s, v) for s, v in ((0, 1.0), (1, 2.0), (2, 3.0))]
    recs += [_rec("a", {"k": 2}, 0, 5.0), _rec("b", {}, 0, 7.0, {"length": 1}), _rec("b", {}, 0, 9.0, {"length": 2})]
    lines = report.records_table(recs, ["m"]).splitlines()
    assert lines[0].split("|")[1:-1] == [" method ", " m ", " seeds ", " calibrated "]
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in lines[2 : lines.index("")]]
    assert ["2.000 ± 1.000", "3"] in [row[1:3] for row in body]  # three seeds: mean ± sample sd, n = 3
    assert sorted(row[1] for row in body) == ["2.000 ± 1.000", "5.000", "7.000", "9.000"]  # four configurations


def _kv(method, seed, at_memory, version="2", window=None):
    """A kv_compression record: a token method at the default budgets, or a quantizer's native row
    (kivi 0.26 of the bytes, gear 0.37: no row within 0.3, so no equal-memory number)."""
    native = {"kivi": 0.26, "gear": 0.37}.get(method)
    fractions = {"native": native} if native else {"0.1": 0.1, "0.25": 0.25, "0.5": 0.5, "0.75": 0.75}
    metrics = {"needle_accuracy@dense": {"value": 1.0}, "decode_ms_per_token@512@dense": {"value": 2.0}}
    row = next(({"budget": b, "kv_bytes_fraction": f} for b, f in reversed(fractions.items()) if f <= 0.3), None)
    for b, f in fractions.items():
        metrics |= {f"kept_fraction@{b}": {"value": 1.0 if native else f}, f"kv_bytes_fraction@{b}": {"value": f}}
        metrics[f"needle_accuracy@{b}"] = {"value": at_memory if row and b == row["budget"] else 1.0}
    if version == "2" and row:
        metrics["needle_accuracy_at_memory"] = {"value": at_memory}
    params = {"context_length": 512} | ({"rank_bytes": 0.3} if version == "2" else {})
    return {
        "task": {"name": "kv_compression", "version": version, "params": params},
        "method": {"name": method, "params": {method: {} if window is None else {"window": window}}},
        "model": {"id": "zoo:tiny-llama"},
        "seed": seed,
        "limit": 2,
        "metrics": metrics,
        "details": {"budgets": ["dense", *fractions]} | ({"ranked_row": row} if version == "2" else {}),
        "provenance": {},
    }


def test_kv_report_ranks_configurations_at_equal_memory_and_averages_their_seeds():
    from harness.tasks.kv_compression import KVCompression

    recs = [_kv("snapkv", s, v, window=8) for s, v in ((0, 0.5), (1, 1.0), (2, 0.0))]
    recs += [_kv("snapkv", 0, 1.0, window=16), _kv("kivi", 0, 0.75), _kv("gear", 0, 1.0), _kv("h2o", 0, 1.0, "1")]
    text = KVCompression.report(recs)
    v2, v1 = text.split("**512 tokens**")[1:]
    assert "at most 0.3 of the dense cache's bytes" in v2 and "task version 1" in v1
    body = [[c.strip() for c in line.split("|")[1:-1]] for line in v2.splitlines() if line.startswith("| ")][1:]
    assert [row[:5] for row in body] == [
        ["1", "`snapkv (window=16)`", "1", "1.000", "0.25 (0.25 of the bytes)"],
        ["2", "`kivi`", "1", "0.750", "native (0.26 of the bytes)"],
        ["3", "`snapkv (window=8)`", "3", "0.500 ± 0.500", "0.25 (0.25 of the bytes)"],  # mean ± sd of 3 seeds
        ["—", "`gear`", "1", "—", "none within 0.3"],
    ]
    assert body[2][8] == "1.00 / 0.50 / 1.00 / 1.00"  # per-budget needle: means over the seeds
    (old,) = [line for line in v1.splitlines() if "`h2o`" in line]
    assert old.startswith("| — | `h2o` | 1 | — | none (task version 1) |")


def test_kv_report_shows_a_dense_only_record_and_absolute_numbers_that_compare_across_models():
    """cla's saving is its model's layout, so its record has the dense row only: the row shows that
    row's cells, and the dense line gives KV bytes/token and nll, which compare across models."""
    from harness.tasks.kv_compression import KVCompression

    rec = _kv("snapkv", 0, 1.0)
    rec["metrics"] |= {"kv_bytes_per_token@dense": {"value": 1536.0}, "nll@dense": {"value": 2.8293}}
    rec["metrics"] |= {"kept_fraction@dense": {"value": 1.0}, "needle_accuracy@dense": {"value": 0.75}}
    del rec["metrics"]["needle_accuracy_at_memory"]  # no row within rank_bytes: unranked
    rec["method"] = {"name": "cla", "params": {"cla": {}}}
    rec["details"] = {"budgets": ["dense"], "ranked_row": None}
    text = KVCompression.report([rec])
    (row,) = [line for line in text.splitlines() if "`cla`" in line]
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[:8] == ["—", "`cla`", "1", "—", "none within 0.3", "dense", "1.00", "–"] and cells[8] == "0.75"
    assert "dense (median over the records): needle 0.75, 1536 KV bytes/token, nll 2.829" in text


def test_cli_report_puts_two_seeds_of_one_configuration_in_one_cell(needle_records, tmp_path, capsys):
    import json
    import shutil

    copy = tmp_path / "r"
    shutil.copytree(needle_records, copy)
    path = next(p for p in copy.glob("perplexity/*/pi/*.json"))
    rec = json.loads(path.read_text())
    moved = {k: dict(v, value=v["value"] + 2) if k.startswith("perplexity@") else v for k, v in rec["metrics"].items()}
    (path.parent / f"{'f' * 16}.json").write_text(json.dumps(dict(rec, seed=1, run_id="f" * 16, metrics=moved)))
    assert cli.main(["report", "--task", "perplexity", "--results", str(copy)]) == 0
    out = capsys.readouterr().out
    (pi,) = [line for line in out.splitlines() if line.startswith("| pi |")]
    assert pi.count("± 1.41") == 2  # both lengths: mean ± sd of (v, v + 2)
    assert "Seeds: 1 to 2 per cell (0, 1)" in out
