"""tiny-math's training rows (harness.zoo.math_rows): world-v2 problems with the world policy's
solutions, tokenised exactly as math_prm_bon prompts the model with prompt=none."""

from __future__ import annotations

import pytest

from harness import mathworld, models
from harness.lm import LM
from harness.zoo.math_rows import MathRowMaker
from harness.zoo.tokenizer import build_tokenizer
from harness.zoo.train import RECIPES, row_maker
from tests.test_zoo_v2 import _tiny_v2_folder


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(2)


def test_an_example_is_the_tasks_prompt_then_a_world_solution_and_eos(tok, tmp_path):
    lm = LM(models.load(_tiny_v2_folder(tmp_path, tok), "cpu"))
    maker = MathRowMaker(tok, 0)
    for seed in (3, 71, 402):
        (prob,), (sol,) = mathworld.world(2).pools(1, 1, seed)
        ids, mask = maker.example(seed)
        cut = mask.index(1)
        assert mask[cut:] == [1] * (len(ids) - cut) and not any(mask[:cut])
        assert ids[:cut] == lm.prompt_ids(prob["problem"], "\n\n")  # math_prm_bon's prompt (prompt=none)
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[cut:-1]) == sol["solution"]
        assert "\\boxed{" in sol["solution"] or sol["answer"] is None


def test_rows_are_packed_seeded_examples(tok):
    maker = row_maker(RECIPES["tiny-math"], tok, 0)
    assert isinstance(maker, MathRowMaker)
    ids, mask = maker.batch(512, 3)
    assert ids.shape == mask.shape == (3, 512) and set(mask.flatten().tolist()) == {0, 1}
    assert (ids[:, 0] == tok.bos_token_id).all()
    assert bool(((ids == tok.eos_token_id).sum(1) >= 1).all())  # an example (< 480 tokens) ends in every row
    again, _ = MathRowMaker(tok, 0).batch(512, 3)
    assert bool((again == ids).all())  # seeded


def test_unknown_row_source_is_refused(tok):
    import dataclasses

    with pytest.raises(ValueError, match="'zoo' or 'math'"):
        row_maker(dataclasses.replace(RECIPES["tiny-math"], data="wiki"), tok, 0)


def test_the_committed_tiny_math_knows_the_worlds_arithmetic():
    """The committed policy model assigns low probability to the world policy's slips: scoring a
    prefix by the least likely token of its steps so far separates prefixes that erred from those
    that did not on held-out problems (AUROC 0.843 on these 20 problems x 3 samples, 0.857 on 60 x 4). This is the
    information a PRM fine-tuned from it (backbone=zoo:tiny-math) has to extract."""
    import torch
    from sklearn.metrics import roc_auc_score

    world = mathworld.world(2)
    policy = world.Policy()
    loaded = models.load("zoo:tiny-math", device="cpu")
    tok, net = loaded.tokenizer, loaded.model.float().eval()
    labels, scores = [], []
    for prob in world.problems(20, mathworld.EVAL_SEED_BASE):
        for j in range(3):
            steps = policy.sample(prob, world.sample_seed(prob, j))
            ids, spans = tok(prob.text + "\n\n")["input_ids"], []
            for s in steps:
                t = tok(s.text + "\n\n", add_special_tokens=False)["input_ids"]
                spans.append((len(ids), len(ids) + len(t)))
                ids += t
            with torch.no_grad():
                logp = torch.log_softmax(net(torch.tensor([ids])).logits[0], -1)
            token_logp = logp[:-1].gather(1, torch.tensor(ids[1:])[:, None])[:, 0]  # log p(ids[i + 1])
            least = 0.0
            for a, b in spans:
                least = min(least, token_logp[a - 1 : b - 1].min().item())
                scores.append(least)
            labels += world.step_ok(prob, steps)
    assert 0 < sum(labels) < len(labels)
    assert roc_auc_score(labels, scores) > 0.75, roc_auc_score(labels, scores)
