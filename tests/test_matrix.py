"""Every registered method x every compatible task runs end to end and writes a valid record."""

import pytest

from harness import fitting, records, registry, runner
from harness.errors import UserError
from harness.interfaces import Method

registry.load()
CELLS = [
    (t, m)
    for t, tc in sorted(registry.TASKS.items())
    for m, mc in sorted(registry.METHODS.items())
    if mc.kind in tc.accepts
    and (tc.generates or "decoding" not in getattr(mc, "patches", ()))
    # a task may name the only sources its smoke setup reads, a source the tasks it cannot feed
    and m in getattr(tc, "smoke_methods", (m,))
    and t not in getattr(mc, "smoke_not_with", ())
]


def test_decoding_methods_refused_on_scoring_tasks():
    with pytest.raises(UserError, match="never generates"):
        runner.resolve(["perplexity"], ["sps"], None, {}, {})


def test_registry_is_populated():
    assert {"needle", "perplexity"} <= set(registry.TASKS)
    assert {"baseline", "pi", "ntk", "dynamic_ntk", "yarn"} <= set(registry.METHODS)
    for cls in registry.TASKS.values():
        assert cls.smoke_args, f"task {cls.name} needs smoke_args for this matrix"


@pytest.mark.parametrize("task,method", CELLS)
def test_cell_writes_valid_record(task, method, tiny_model_with, tmp_path, monkeypatch, request):
    tcls, mcls = registry.TASKS[task], registry.METHODS[method]
    tiny_model = tiny_model_with(**mcls.smoke_model_config)
    method_args = {k: v.replace("{model}", tiny_model) for k, v in mcls.smoke_args.items()}
    task_args = dict(tcls.smoke_args)
    for holder, fixture in (
        ("{videos}", "synthetic_video_folder"),
        ("{mtscore_features}", "mtscore_features"),
        ("{fake_vbench_python}", "fake_vbench_python"),
        ("{dreamsim_features}", "dreamsim_features"),
    ):
        if any(holder in v for v in list(method_args.values()) + list(task_args.values())):
            value = request.getfixturevalue(fixture)  # video files the smoke configuration reads
            method_args = {k: v.replace(holder, value) for k, v in method_args.items()}
            task_args = {k: v.replace(holder, value) for k, v in task_args.items()}
    monkeypatch.setenv("HARNESS_ARTIFACTS", str(tmp_path / "artifacts"))
    if mcls.fit is not Method.fit:  # a method with a fit stage: fit its smoke configuration first
        try:
            fitting.fit(method, tiny_model, task, task_args, method_args, device="cpu", log=lambda m: None)
        except UserError as e:
            assert "no fit stage to run" in str(e)
    cells = runner.resolve(
        [task], [method], tiny_model if tcls.needs_lm else None, task_args, method_args, seed=0, limit=3
    )
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    assert rec["task"]["name"] == task and rec["method"]["name"] == method
    main = rec["metrics"].get(rec["main_metric"])
    if main is None:  # allowed only where the task says no row qualified (kv_compression: none within rank_bytes)
        assert "ranked_row" in rec["details"] and rec["details"]["ranked_row"] is None, rec["main_metric"]
    else:
        assert main["direction"] in ("higher", "lower") and main["n"] > 0
        assert main["value"] == main["value"]  # not NaN
    samples = records.read_samples(out.path)
    assert samples and all("id" in s for s in samples)
    assert len({s["id"] for s in samples}) == len(samples)
    prov = rec["provenance"]
    for key in (
        "harness_version",
        "git_commit",
        "python",
        "torch",
        "transformers",
        "device",
        "threads",
        "model_sha256",
        "task_version",
        "data_hash",
        "seed",
        "started",
        "wall_time_s",
    ):
        assert key in prov
    if tcls.needs_lm:
        assert prov["model_sha256"] and len(prov["model_sha256"]) == 64
    else:
        assert rec["model"]["id"] == "none" and prov["model_sha256"] is None


@pytest.mark.parametrize("method", sorted(registry.METHODS))
def test_every_method_declares_an_effect_check(method):
    cls = registry.METHODS[method]
    assert cls.check_effect is not Method.check_effect, f"{method} must override check_effect"
