"""Determinism (issue 9): the same cell run twice on CPU with the same seed gives identical metrics
and identical per-sample rows, and the record states the thread count and library versions this
holds for. Sampled decoding (sps at temperature 1 inside the needle task is greedy, so the sampled
case uses the LM API directly) is covered too."""

import torch

from harness import records, runner


def _run(tiny_model, out, method, task, args):
    cells = runner.resolve([task], [method], tiny_model, args, {}, seed=3, limit=4)
    (o,) = runner.evaluate(cells, device="cpu", out=out, overwrite=True)
    return records.read(o.path), records.read_samples(o.path)


def test_same_cell_twice_is_identical(tiny_model, tmp_path):
    for method, task, args in [
        ("selfextend", "needle", {"context_length": "160", "depths": "2", "max_new_tokens": "4"}),
        ("yarn", "perplexity", {"context_length": "96", "n_tokens": "400"}),
    ]:
        a, sa = _run(tiny_model, tmp_path / "a", method, task, args)
        b, sb = _run(tiny_model, tmp_path / "b", method, task, args)
        assert a["run_id"] == b["run_id"]
        assert a["metrics"] == b["metrics"]
        assert sa == sb
        prov = a["provenance"]
        assert prov["threads"] == torch.get_num_threads()
        assert prov["torch"] == torch.__version__ and prov["transformers"] and prov["python"]


def test_sampled_generation_repeats_under_a_seed(tiny_lm):
    prompts = [[11, 12, 13, 14], [20, 21]]
    first = tiny_lm.generate(prompts, max_new_tokens=6, temperature=1.0, seed=5)
    again = tiny_lm.generate(prompts, max_new_tokens=6, temperature=1.0, seed=5)
    other = tiny_lm.generate(prompts, max_new_tokens=6, temperature=1.0, seed=6)
    assert first == again
    assert first != other  # the seed matters: a fixed output would make the test vacuous
