"""Report tables show seed spread (issue 23): records of one configuration that differ only in their
seed form one row or cell, mean ± sample sd with the seed count said; records of different
configurations never pool; rows from another device or torch version are marked."""

import copy

import pytest

from harness import report, seeds


def _rec(method="yarn", seed=0, values=None, params=None, device="cpu", torch="2.13.0+cpu", lengths=(64, 128)):
    values = values or {64: 10.0, 128: 20.0}
    return {
        "task": {"name": "perplexity", "version": "1", "params": {"context_length": list(lengths), "n_tokens": 300}},
        "method": {"name": method, "params": {method: dict(params or {"factor": 2.0})}, "components": []},
        "model": {"id": "zoo:m", "sha256": "abc"},
        "seed": seed,
        "limit": None,
        "main_metric": "perplexity",
        "metrics": {f"perplexity@{L}": {"value": v, "n": 4} for L, v in values.items()},
        "provenance": {"device": device, "torch": torch, "calibrated": True, "seed": seed},
    }


def _rows(text: str) -> dict[str, list[str]]:
    lines = text.splitlines()
    heads = {i - 1 for i, line in enumerate(lines) if line.startswith("|---")}
    rows = [line for i, line in enumerate(lines) if line.startswith("| ") and i not in heads]
    return {cells[0]: cells[1:] for cells in ([c.strip() for c in line.split("|")[1:-1]] for line in rows)}


def test_two_seeds_of_one_configuration_are_one_cell_with_mean_and_sd():
    # before: the two records tied on n and the first one read silently won the cell (10.00)
    recs = [_rec(seed=0, values={64: 10.0, 128: 20.0}), _rec(seed=1, values={64: 12.0, 128: 26.0})]
    text = report.markdown("perplexity", recs, "perplexity")
    assert _rows(text) == {"yarn": ["11.00 ± 1.41", "23.00 ± 4.24"]}
    assert "Seeds: 2 per cell (0, 1)" in text
    lengths, rows = report.table(recs, "perplexity")
    cell = rows["yarn"][64]
    assert (cell.spread.mean, cell.spread.n) == (11.0, 2) and cell.spread.sd == pytest.approx(2**0.5)


def test_a_method_parameter_makes_two_rows_not_one():
    recs = [_rec(params={"factor": 2.0}, values={64: 10.0}), _rec(params={"factor": 4.0}, values={64: 30.0})]
    rows = _rows(report.markdown("perplexity", recs, "perplexity"))
    assert rows == {"yarn (factor=2.0)": ["10.00"], "yarn (factor=4.0)": ["30.00"]}
    assert "Seeds: one per cell (0); no seed spread measured." in report.markdown("perplexity", recs, "perplexity")


def test_records_of_one_method_at_other_lengths_fill_one_row():
    recs = [_rec(values={64: 10.0}, lengths=(64,)), _rec(values={4096: 50.0}, lengths=(4096,))]
    assert _rows(report.markdown("perplexity", recs, "perplexity")) == {"yarn": ["10.00", "50.00"]}


def test_seeds_of_one_configuration_outrank_nothing_but_samples():
    # two configurations at one length (different task params): the one with more samples per
    # seed wins the cell, and its seeds are averaged; the other's value never enters
    few = [_rec(seed=s, values={64: v}) for s, v in ((0, 10.0), (1, 14.0))]
    many = _rec(values={64: 99.0})
    many["task"]["params"]["n_tokens"] = 900
    many["metrics"]["perplexity@64"]["n"] = 40
    assert _rows(report.markdown("perplexity", [*few, many], "perplexity"))["yarn"][0] == "99.00"
    more = copy.deepcopy(few)
    for r in more:
        r["metrics"]["perplexity@64"]["n"] = 400
    assert _rows(report.markdown("perplexity", [*more, many], "perplexity"))["yarn"][0] == "12.00 ± 2.83"


def test_cells_from_another_device_or_torch_are_marked():
    recs = [
        _rec("yarn", values={64: 10.0}),
        _rec("pi", values={64: 12.0}),
        _rec("ntk", values={64: 14.0}, device="cuda", torch="2.11.0+cu130"),
    ]
    text = report.markdown("perplexity", recs, "perplexity")
    assert _rows(text) == {"ntk": ["14.00†"], "pi": ["12.00"], "yarn": ["10.00"]}
    assert "unmarked cpu, torch 2.13.0+cpu; † cuda, torch 2.11.0+cu130" in text
    torch_only = [_rec("yarn"), _rec("pi", torch="2.14.1+cpu")]
    assert "†" in _rows(report.markdown("perplexity", [*torch_only, _rec("ntk")], "perplexity"))["pi"][0]
    one_env = report.markdown("perplexity", [_rec("yarn"), _rec("pi")], "perplexity")
    assert "†" not in one_env and "Environments" not in one_env


def test_records_table_marks_rows_and_counts_seeds():
    recs = [_rec("pi", seed=s, values={}) for s in (0, 1, 2)] + [_rec("ntk", values={}, device="cuda")]
    for r, v in zip(recs, (1.0, 2.0, 3.0, 7.0)):
        r["metrics"]["m"] = {"value": v}
    text = report.records_table(recs, ["m"])
    assert _rows(text) == {"pi": ["2.000 ± 1.000", "3", "true"], "ntk†": ["7.000", "1", "true"]}
    assert "Seeds: 1 to 3 per cell (0, 1, 2)" in text and "† cuda, torch 2.13.0+cpu" in text


def test_aggregate_groups_by_everything_but_the_seed():
    recs = [_rec(seed=s, values={64: v}) for s, v in ((0, 1.0), (1, 3.0))]
    other_model = _rec(values={64: 5.0})
    other_model["model"]["sha256"] = "def"  # other weights under the same id: another configuration
    limited = dict(_rec(values={64: 7.0}), limit=2)
    out = seeds.aggregate([*recs, other_model, limited], ["perplexity@64"])
    assert [(g.seeds, s["perplexity@64"]) for g, s in out] == [
        ([0, 1], seeds.Spread(2.0, 2**0.5, 2)),
        ([0], seeds.Spread(5.0, None, 1)),
        ([0], seeds.Spread(7.0, None, 1)),
    ]


def _spec(method, seed, per_temp, gamma=4, **metrics):
    """A spec_acceptance record: per_temp = {"0": (new tokens, target forwards, prompts), ...}."""
    rec = _rec(method, seed, values={}, params={"gamma": gamma})
    rec["task"] = {"name": "spec_acceptance", "version": "1", "params": {"temperatures": [0.0, 1.0]}}
    rec["details"] = {
        "per_temperature": {
            k: {"new_tokens": t, "target_forwards": f, "prompts": p} for k, (t, f, p) in per_temp.items()
        }
    }
    rec["metrics"] = {k: {"value": v, "n": 1} for k, v in metrics.items()}
    return rec


def test_spec_tau_is_pooled_per_temperature_over_prompts_and_seeds_and_ranked_per_temperature():
    from harness.tasks.spec_acceptance import SpecAcceptance

    # sps: seed 0 has τ 100/50 = 2.0, seed 1 60/40 = 1.5; pooled 160/90 = 1.78 (the mean of the two
    # seeds' τ would be 1.75; the per-prompt mean in tau@T0 is ignored)
    sps = [
        _spec("sps", 0, {"0": (100, 50, 4), "1": (40, 40, 4)}, **{"tau@T0": 3.0}),
        _spec("sps", 1, {"0": (60, 40, 4), "1": (44, 40, 4)}, **{"tau@T0": 3.0}),
    ]
    eagle = [_spec("eagle", 0, {"0": (95, 50, 4), "1": (70, 35, 4)})]
    text = SpecAcceptance.report(sps + eagle)
    t0 = _rows(text.split("**T = 0**", 1)[1].split("**T = 1**", 1)[0])
    t1 = _rows(text.split("**T = 1**", 1)[1].split("**Losslessness**", 1)[0])
    assert t0 == {
        "1": ["`eagle`", "1.90", "4", "—", "—", "—", "—"],
        "2": ["`sps`", "1.78", "8 (4 × 2)", "0.35", "—", "—", "—"],
    }
    assert [t1["1"][:3], t1["2"][:3]] == [["`eagle`", "2.00", "4"], ["`sps`", "1.05", "8 (4 × 2)"]]
    assert "Seeds: 1 to 2 per cell (0, 1)" in text


def test_a_lossy_decoder_is_listed_last_and_not_ranked_on_tau():
    from harness.tasks import _spec_report

    sps = _spec("sps", 0, {"0": (100, 50, 4)}, lossless_greedy=1.0)
    co_llm = _spec("co_llm", 0, {"0": (100, 5, 4)}, lossless_greedy=0.0)  # τ 20: the target ran on deferral only
    text = _spec_report.tables([co_llm, sps])
    t0 = _rows(text.split("**T = 0**", 1)[1].split("**Losslessness**", 1)[0])
    assert t0["1"][:2] == ["`sps`", "2.00"] and t0["—"][:2] == ["`co_llm` (lossy)", "20.00"]
    assert "not ranked against the lossless decoders" in text


def test_spec_configurations_are_not_pooled_and_old_records_keep_their_own_tau():
    from harness.tasks import _spec_report

    a, b = _spec("sps", 0, {"0": (100, 50, 4)}, gamma=4), _spec("sps", 1, {"0": (10, 10, 4)}, gamma=2)
    assert [_spec_report.pooled_tau([r], "0") for r in (a, b)] == [(2.0, 4), (1.0, 4)]
    assert len(_rows(_spec_report.tables([a, b]).split("**T = 1**")[0])) == 2  # two rows: gamma differs
    old = _spec("sps", 0, {}, **{"tau@T0": 1.9})
    old["details"]["per_temperature"]["0"] = {"tau_pooled": 1.6}  # written before the totals
    assert _spec_report.pooled_tau([old], "0") == (1.6, 1)
    assert _spec_report.pooled_tau([old, dict(old, seed=1)], "0") is None  # not recoverable: no cell


def _kv(method, seed, needle, budgets=("0.5",), device="cpu"):
    rec = _rec(method, seed, values={}, params={"window": 8}, device=device)
    rec["task"] = {"name": "kv_compression", "version": "1", "params": {"context_length": 256}}
    rec["details"] = {"budgets": [*budgets, "dense"]}
    keys = ("kept_fraction", "kv_bytes_fraction", "needle_accuracy_query_aware", "ppl_ratio", "kl_vs_dense")
    rec["metrics"] = {f"{k}@{b}": {"value": 0.5} for k in keys for b in budgets}
    rec["metrics"] |= {f"needle_accuracy@{b}": {"value": needle} for b in budgets}
    rec["metrics"] |= {f"decode_time_ratio@256@{b}": {"value": 1.0} for b in budgets}
    rec["metrics"] |= {"needle_accuracy@dense": {"value": 1.0}, "decode_ms_per_token@256@dense": {"value": 2.0}}
    return rec


def test_kv_rows_are_configurations_with_seeds_averaged():
    from harness.tasks.kv_compression import KVCompression

    recs = [_kv("snapkv", 0, 0.4), _kv("snapkv", 1, 0.6), _kv("h2o", 0, 0.9, device="cuda")]
    text = KVCompression.report(recs)
    lines = [[c.strip() for c in x.split("|")[1:-1]] for x in text.splitlines() if x.startswith("| ")]
    rows = {cells[1]: cells[1:] for cells in lines if cells[1] != "method"}  # unranked rows share rank —
    assert set(rows) == {"`snapkv`", "`h2o`†"}
    assert rows["`snapkv`"][1] == "2" and rows["`h2o`†"][1] == "1"  # seeds per row
    assert rows["`snapkv`"][7] == "0.50" and rows["`h2o`†"][7] == "0.90"  # the needle: means over the seeds
    assert "Seeds: 1 to 2 per cell (0, 1)" in text


def _prm(method, seed, acc, agg="min", grid=(1, 2)):
    rec = _rec(method, seed, values={}, params={"agg": agg})
    rec["task"] = {"name": "math_prm_bon", "version": "1", "params": {"world_problems": 200}}
    metrics = {"accuracy": acc, "pass": [a + 0.2 for a in acc], "majority": [a + 0.1 for a in acc]}
    rec["metrics"] = {f"{k}@{n}": {"value": v} for k, vs in metrics.items() for n, v in zip(grid, vs)}
    rec["metrics"]["accuracy"] = {"value": acc[-1], "n": 200}
    rec["details"] = {"grid": list(grid), "intervals": {f"accuracy@{grid[-1]}": [acc[-1] - 0.1, acc[-1] + 0.1]}}
    return rec


def test_prm_curves_pool_the_seeds_of_a_configuration_only():
    from harness.tasks import _prm_report
    from harness.tasks.math_prm_bon import MathPrmBon

    recs = [_prm("orm", 0, [0.5, 0.4]), _prm("orm", 1, [0.5, 0.6]), _prm("orm", 0, [0.3, 0.3], agg="last")]
    rows = _rows(MathPrmBon.report(recs))
    assert rows["orm (agg=min)"] == ["0.500 ± 0.000", "0.500 ± 0.141", "0.400–0.600 (mean of 2 seeds' CIs)", "—"]
    assert rows["orm (agg=last)"][:2] == ["0.300", "0.300"]
    assert rows["oracle pass@N"][:2] == ["0.700 ± 0.000", "0.700 ± 0.141"]  # one record per seed, averaged
    grid, base, groups = _prm_report.curves(recs)
    assert grid == [1, 2] and sorted(r["seed"] for r in base) == [0, 1] and len(groups) == 2


def test_prm_report_gives_each_pool_its_own_table():
    from harness.tasks.math_prm_bon import MathPrmBon

    v1 = [_prm("orm", 0, [0.5, 0.4]), _prm("majority", 0, [0.5, 0.6])]
    v2 = [_prm("orm", 0, [0.6, 0.9]), _prm("majority", 0, [0.6, 0.7])]
    for r in v2:
        r["task"]["params"]["world_version"] = 2
    text = MathPrmBon.report(v1 + v2)
    first, second = text.split("**synthetic math world v2")
    assert "**synthetic math world v1" in first
    # each pool's oracle row is its own (v1: 0.6 at N=2, v2: 1.1), never an average over pools
    assert _rows(first)["oracle pass@N"][1] == "0.600" and _rows(second)["oracle pass@N"][1] == "1.100"
    assert _rows(second)["orm (agg=min)"][:2] == ["0.600", "0.900"] and "0.400" not in second
    assert "world v" not in MathPrmBon.report(v1)  # one pool: the table alone, as before
    sampled = _prm("orm", 0, [0.5, 0.4])
    sampled["task"]["params"] |= {"solutions": "generate", "problems": "math500.jsonl", "world_version": 2}
    assert "**problems from a file, pools sampled from the model**" in MathPrmBon.report(v1 + [sampled])
    # a smaller pool of the same world (the GenRM-CoT cell's 50 problems x 16 samples) is another pool
    small = [_prm("genrm", 0, [0.4, 0.3]), _prm("majority", 0, [0.45, 0.5])]
    for r in small:
        r["task"]["params"] |= {"world_problems": 50, "world_samples": 16}
    text = MathPrmBon.report(v1 + small)
    big, little = text.split("(50 problems x 16 samples)**")
    assert "(200 problems x 64 samples)**" in big and "genrm" not in big
    assert _rows(little)["oracle pass@N"][1] == "0.500" and _rows(big)["oracle pass@N"][1] == "0.600"


def test_prm_curves_script_draws_the_mean_with_an_sd_band(tmp_path):
    import importlib.util
    from pathlib import Path

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(__file__).resolve().parents[1] / "scripts" / "prm_curves.py"
    spec = importlib.util.spec_from_file_location("prm_curves", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    fig, ax = plt.subplots()
    script.draw(ax, [1, 2], [seeds.Spread(0.5, None, 2), seeds.Spread(0.5, 0.1, 2)], label="x")
    assert list(ax.lines[0].get_ydata()) == [0.5, 0.5] and len(ax.collections) == 1  # the ± sd band
    script.draw(ax, [1, 2], [seeds.Spread(0.5, None, 1), None], label="y")
    assert list(ax.lines[1].get_xdata()) == [1] and len(ax.collections) == 1  # one seed: no band
    plt.close(fig)
    script.plot([_prm("orm", s, [0.5, 0.4 + s / 10]) for s in (0, 1)], tmp_path / "c.png")
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"


def test_needle_heatmap_panels_are_configurations_with_their_seeds_pooled():
    def needle(seed, factor, acc):
        rec = _rec(seed=seed, values={}, params={"factor": factor})
        rec["details"] = {"grid": [{"depth": 50.0, "context_length": 64, "accuracy": acc, "n": 2}]}
        return rec

    cells = report.heatmap_cells([needle(0, 2.0, 1.0), needle(1, 2.0, 0.5), needle(0, 4.0, 0.0)])
    assert {k: dict(v) for k, v in cells.items()} == {
        "yarn (factor=2.0)": {(50.0, 64): [3.0, 4]},
        "yarn (factor=4.0)": {(50.0, 64): [0.0, 2]},
    }


def test_prm_labels_name_a_parameter_that_records_leave_out_at_its_default():
    from harness.tasks import _prm_report

    scratch = _prm("math_shepherd", 0, [0.5, 0.4])
    tuned = _prm("math_shepherd", 0, [0.5, 0.4])
    tuned["method"]["params"]["math_shepherd"]["backbone"] = "zoo:tiny-math"  # omit_at_default: present only when set
    assert "backbone" not in _prm_report.report_label(scratch)
    assert "backbone=zoo:tiny-math" in _prm_report.report_label(tuned)
