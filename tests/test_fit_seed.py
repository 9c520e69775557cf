"""Fit seeds (issue 23, "Seeds"): a fit samples (its data, initialisation, rollouts), so `harness
fit --seed N` makes a fit of its own and `harness eval --fit-seed N` loads it. Fit seed 0 adds
nothing to an artifact key or a run id, so every committed key and record stays valid.

The fits here are PAV's world PRM at its smoke size (no LM, about a CPU-second) and, for the
lm-eval bridge, svd_kv's two-sequence calibration on the tiny model."""

import json
import shlex
from pathlib import Path

import pytest

from harness import artifacts, cli, fitting, grid, models, params, registry, report, runner, sweep
from harness.errors import UserError
from harness.interfaces import MethodContext

ROOT = Path(__file__).resolve().parents[1]
PAV = {"problems": "3", "samples": "2", "rollouts": "2", "epochs": "1", "d_model": "16", "layers": "1"}
BON = {"world_problems": "3", "world_samples": "4", "trials": "5", "bootstrap": "5"}


@pytest.fixture
def store(tmp_path, monkeypatch):
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "art"))
    return tmp_path / "art"


def _flags(flag: str, args: dict) -> list[str]:
    return [x for k, v in args.items() for x in (flag, f"{k}={v}")]


def _fit(seed: int, overwrite: bool = False) -> tuple[str, dict]:
    return fitting.fit("pav", "none", None, {}, PAV, seed=seed, overwrite=overwrite, log=lambda m: None)


def _files(key: str) -> dict[str, bytes]:
    """The fitted files of an artifact (meta.json holds timings, so it is left out)."""
    return {p.name: p.read_bytes() for p in artifacts.folder(key).iterdir() if p.name != "meta.json"}


def one_error(capsys, *fragments) -> str:
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("harness: error:"), err
    for f in fragments:
        assert f in err, err
    return err


def test_fit_seeds_make_different_artifacts_and_a_seed_remakes_its_own(store):
    k0, p0 = _fit(0)
    k1, p1 = _fit(1)
    assert k0 != k1 and (p0["fit_seed"], p1["fit_seed"]) == (0, 1)
    w0, w1 = _files(k0), _files(k1)
    assert w0 and w0.keys() == w1.keys() and w0 != w1
    again, _ = _fit(1, overwrite=True)  # refitting seed 1 from scratch: same key, same bytes
    assert again == k1 and _files(k1) == w1


class _SeedBlindFit:
    """A fit whose parameters do not mention the seed (the EAGLE head, LongLoRA, ...): before fit
    seeds, `harness fit --seed 1` found (or with --overwrite replaced) the seed-0 artifact."""

    name, fit_name, fit_version = "blind", None, "3"

    def fit_params(self, lm, ctx):
        return {"steps": 2}

    def fit_data_hash(self, lm, ctx):
        return "data"


def _default_orm_record() -> dict:
    """The committed record of the default orm fit on the task's defaults; the folder also holds
    world-v2 records of other orm fits (a tiny-math backbone), in no particular listing order."""
    orm = params.to_dict(params.build(registry.method("orm"), {}, "method orm"))
    for path in sorted((ROOT / "results" / "math_prm_bon" / "none" / "orm").glob("*.json")):
        rec = json.loads(path.read_text())
        if rec["method"]["params"]["orm"] == orm and "world_version" not in rec["task"]["params"]:
            return rec
    raise AssertionError("no committed record of the default orm fit")


def test_artifact_keys_take_the_fit_seed_only_when_it_is_not_0():
    old = artifacts.key({"method": "blind", "params": {"steps": 2}, "fit_version": "3", "model": "w", "data": "data"})
    keys = [artifacts.key_for(_SeedBlindFit(), None, MethodContext(seed=s), "w") for s in (0, 1, 2)]
    assert keys[0] == old and len(set(keys)) == 3
    # the committed orm record names the key of the default orm fit at seed 0
    rec = _default_orm_record()
    orm = params.build(registry.method("orm"), {}, "method orm")
    assert artifacts.key_for(orm, None, MethodContext(seed=0), None) == rec["provenance"]["method_artifact"][0]
    assert artifacts.key_for(orm, None, MethodContext(seed=1), None) != rec["provenance"]["method_artifact"][0]


def test_run_id_takes_the_fit_seed_only_when_it_is_not_0(tmp_path):
    rec = _default_orm_record()
    ids = {}
    for fit_seed in (0, 1):
        (cell,) = runner.resolve(
            ["math_prm_bon"], ["orm"], "none", {}, {}, rec["seed"], rec["limit"], fit_seed=fit_seed
        )
        config, ids[fit_seed], _ = runner.locate(cell, tmp_path)
        assert config.get("fit_seed") == (fit_seed or None)
    assert ids[0] == rec["run_id"] and ids[1] != ids[0]
    # a method without a fit stage has no fit seed: the cell stays the fit-seed-0 cell
    (plain,) = runner.resolve(["math_prm_bon"], ["majority"], "none", {}, {}, fit_seed=1)
    assert plain.fit_seed == 0 and "fit_seed" not in plain.config(None)


def test_eval_loads_the_fit_of_its_fit_seed_and_the_record_says_which(store, tmp_path):
    k0, _ = _fit(0)
    k1, _ = _fit(1)
    runs = {}
    for seed, fit_seed in ((0, 0), (0, 1), (3, 1)):
        cells = runner.resolve(["math_prm_bon"], ["pav"], None, BON, PAV, seed=seed, fit_seed=fit_seed)
        (runs[seed, fit_seed],) = runner.evaluate(cells, device="cpu", out=tmp_path / "out", log=lambda m: None)
    for (seed, fit_seed), out in runs.items():
        assert out.record["fit_seed"] == fit_seed and out.record["seed"] == seed
        # the evaluation seed never picks the fit: seed 3 at fit seed 1 loads fit seed 1's artifact
        assert out.record["provenance"]["method_artifact"] == [k1 if fit_seed else k0]
        assert out.path.stem == out.record["run_id"]
    assert len({o.path for o in runs.values()}) == 3
    # one configuration: its runs at two fit seeds are two seeds in the report's table
    main = runs[0, 0].record["main_metric"]
    table = report.records_table([runs[0, 0].record, runs[0, 1].record], [main])
    lines = [line for line in table.splitlines() if line.startswith("|")]  # the notes under it aside
    head, *_, row = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert row[head.index("seeds")] == "2"


@pytest.mark.parametrize("fit_seed", [0, 2])
def test_a_missing_fit_stops_eval_before_any_cell_naming_the_exact_fit_command(fit_seed, store, tmp_path, capsys):
    out = tmp_path / "out"
    argv = ["eval", "--task", "math_prm_bon", "--method", "majority", "--method", "pav", "--no-progress"]
    argv += [*_flags("--task-arg", BON), *_flags("--method-arg", PAV), "--fit-seed", str(fit_seed), "--out", str(out)]
    assert cli.main(argv) == 2
    err = one_error(capsys, "method pav needs its fit stage", *([f"at fit seed {fit_seed}"] if fit_seed else []))
    assert not out.exists()  # majority, listed first, did not run either
    command = err.split("`")[1]
    assert command.startswith("harness fit --method pav") and command.endswith(f"--seed {fit_seed}") == bool(fit_seed)
    assert cli.main(shlex.split(command)[1:]) == 0  # the command it names makes the missing fit
    capsys.readouterr()
    assert cli.main(argv) == 0
    recs = [json.loads(p.read_text()) for p in out.rglob("*.json")]
    assert sorted((r["method"]["name"], r["fit_seed"]) for r in recs) == [("majority", 0), ("pav", fit_seed)]


@pytest.mark.parametrize("seed", ["-1", str(2**63)])
def test_fit_seeds_outside_the_range_exit_2_with_one_line(seed, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "o")
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("validation let the work start"))
    assert cli.main(["eval", "--task", "needle", "--method", "longlora", "--fit-seed", seed, "--out", out]) == 2
    one_error(capsys, "--fit-seed must be an integer in [0, 2**63 - 1]")
    for flag in ("--seed", "--fit-seed"):
        assert cli.main(["fit", "--method", "pav", flag, seed]) == 2
        one_error(capsys, "--seed must be an integer in [0, 2**63 - 1]")
    monkeypatch.setattr(sweep, "run_local", lambda *a, **k: pytest.fail("validation let the work start"))
    monkeypatch.setattr(fitting, "fit", lambda *a, **k: pytest.fail("validation let the work start"))
    for text in (
        f"fit_seed: [{seed}]\nruns:\n  - {{tasks: [needle], methods: [baseline]}}\n",
        f"fit:\n  - {{method: pav, fit_seed: {seed}}}\nruns:\n  - {{tasks: [needle], methods: [baseline]}}\n",
    ):
        g = tmp_path / "g.yaml"
        g.write_text("task_args: {context_length: 64}\n" + text)
        assert cli.main(["sweep", str(g), "--out", out]) == 2
        one_error(capsys, "fit_seed must be integers in [0, 2**63 - 1]")


def test_eval_fit_seed_with_no_fitted_method_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(models, "load", lambda *a, **k: pytest.fail("validation let the work start"))
    argv = ["eval", "--task", "needle", "--method", "yarn", "--fit-seed", "1", "--out", str(tmp_path / "o")]
    assert cli.main(argv) == 2
    one_error(capsys, "--fit-seed 1: none of the methods yarn has a fit stage")


GRID = """models: [none]
task_args: {world_problems: 3, world_samples: 4, trials: 5, bootstrap: 5}
method_args: {problems: 3, samples: 2, rollouts: 2, epochs: 1, d_model: 16, layers: 1}
fit:
  - {method: pav}
  - {method: orm, fit_seed: [5, 6]}
  - {method: pqm, seed: 7}
runs:
  - {tasks: [math_prm_bon], methods: [majority, pav], seeds: [0, 1], fit_seed: [0, 2]}
  - {tasks: [math_prm_bon], methods: [orm], fit_seed: 4}
"""


def test_grid_fit_seed_crosses_like_seeds_and_the_fits_run_at_every_fit_seed_first(tmp_path, monkeypatch):
    g = tmp_path / "g.yaml"
    g.write_text(GRID)
    out = str(tmp_path / "out")
    specs = grid.expand(grid.load_grid(g), g, out)
    cells = sorted((s.label.split(" / ")[1], s.seed, s.fit_seed) for s in specs)
    pav = [("pav", s, f) for s in (0, 1) for f in (0, 2)]
    assert cells == [("majority", 0, 0), ("majority", 1, 0), ("orm", 0, 4), *pav]
    for s in specs:  # each spec's path is the record `harness eval --fit-seed` writes
        cells = runner.resolve(s.tasks, s.methods, s.model, s.task_args, s.method_args, s.seed, fit_seed=s.fit_seed)
        cell = cells[s.index]
        assert str(runner.locate(cell, Path(out))[2]) == s.path
        assert ("fit seed" in s.label) == bool(s.fit_seed)
    made = []
    monkeypatch.setattr(fitting, "fit", lambda method, *a, **k: made.append((method, a[4])))
    monkeypatch.setattr(sweep, "run_local", lambda *a, **k: None)
    sweep.sweep(str(g), out=out, log=lambda m: None)
    # pav at its cells' fit seeds; orm and pqm at the seeds their entries name (fit_seed, or seed)
    assert made == [("pav", 0), ("pav", 2), ("orm", 5), ("orm", 6), ("pqm", 7)]


def test_grid_fit_entry_cannot_name_both_seed_keys(tmp_path, capsys):
    g = tmp_path / "g.yaml"
    g.write_text("fit:\n  - {method: pav, seed: 1, fit_seed: 1}\nruns:\n  - {tasks: [needle], methods: [baseline]}\n")
    assert cli.main(["sweep", str(g), "--out", str(tmp_path / "o"), "--dry-run"]) == 2
    one_error(capsys, "fit[0]", "not both")


def test_lm_eval_model_loads_the_fit_of_its_fit_seed(tiny_model, store):
    pytest.importorskip("lm_eval")
    from harness.tasks.lm_eval._model import HarnessModel

    args = dict(registry.method("svd_kv").smoke_args)
    keys = {
        s: fitting.fit("svd_kv", tiny_model, None, {}, args, seed=s, device="cpu", log=lambda m: None)[0]
        for s in (0, 1)
    }
    assert keys[0] != keys[1]
    for fit_seed in (0, 1):
        model = HarnessModel(model=tiny_model, method="svd_kv", device="cpu", fit_seed=fit_seed, **args)
        assert model.components[0]["artifact"] == keys[fit_seed] and model.fit_seed == fit_seed
        model._stack.close()
    with pytest.raises(UserError, match=r"at fit seed 2 .*--seed 2`"):
        HarnessModel(model=tiny_model, method="svd_kv", device="cpu", fit_seed=2, **args)
    for bad in (-1, 2**63, "two"):
        with pytest.raises(UserError, match="model_args fit_seed must be an integer"):
            HarnessModel(model=tiny_model, method="svd_kv", device="cpu", fit_seed=bad, **args)


def test_a_fit_that_reuses_an_artifact_costs_that_artifact_fit_too(store):
    """beam_search's fit loads its PRM's artifact when one exists: its own fit then takes no time,
    and the cost its records carry must add the PRM's training (the methods table read 0 s)."""
    prm_args = ",".join(f"{k}={v}" for k, v in PAV.items())
    pav_key, pav = _fit(0)
    key, payload = fitting.fit(
        "beam_search", "none", None, {}, {"prm": "pav", "prm_args": prm_args}, log=lambda m: None
    )
    assert payload["prm_artifact"] == pav_key and payload["reused_artifacts"] == [pav_key]
    cost = fitting.cost(key)
    assert cost["seconds"] == round(payload["fit_seconds"] + pav["fit_seconds"], 1)
    assert cost["cpu_seconds"] == round(payload["fit_cpu_seconds"] + pav["fit_cpu_seconds"], 1)

    # a PRM that beam_search's fit trains itself is in its own fit time already: nothing is added
    fresh = prm_args.replace("epochs=1", "epochs=2")
    key, payload = fitting.fit("beam_search", "none", None, {}, {"prm": "pav", "prm_args": fresh}, log=lambda m: None)
    assert "reused_artifacts" not in payload and artifacts.load(payload["prm_artifact"]) is not None
    assert fitting.cost(key)["seconds"] == payload["fit_seconds"]
