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
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| method")]
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
