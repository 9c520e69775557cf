from harness import registry
from harness.interfaces import TaskContext
from harness.synthetic import EVAL_SEED_BASE, PASSKEY_GARBAGE
from harness.tasks.passkey import Passkey


def test_alias():
    cls, params = registry.task("passkey_2k")
    assert cls is Passkey and params == {"context_length": "2048"}


def test_prompt_is_deterministic_and_fits(tiny_lm):
    task = Passkey(context_length=(400,))
    a = task.build(tiny_lm, 400, EVAL_SEED_BASE + 1)
    assert a == task.build(tiny_lm, 400, EVAL_SEED_BASE + 1)
    assert a != task.build(tiny_lm, 400, EVAL_SEED_BASE + 2)
    per_repeat = len(tiny_lm.encode(" " + PASSKEY_GARBAGE))
    assert 400 - task.max_new_tokens - per_repeat < len(a["ids"]) <= 400 - task.max_new_tokens
    text = tiny_lm.decode(a["ids"])
    assert f"The pass key is {a['key']}. Remember it. {a['key']} is the pass key." in text
    assert text.endswith("What is the pass key? The pass key is")
    assert 1 <= int(a["key"]) <= 50000
    before = text.split("The pass key is")[0].count("The grass is green")
    assert before == round(a["depth"] / 100 * a["repeats"])


def test_run_scores_exact_key(tiny_lm):
    res = Passkey(context_length=(200, 300), samples=2, max_new_tokens=3).run(TaskContext(lm=tiny_lm, limit=3))
    assert res.metrics["accuracy"].n == 3 and len(res.samples) == 3
    assert {"accuracy@200", "accuracy@300"} <= set(res.metrics)
    assert all(row["correct"] in (0, 1) for row in res.samples)


def test_the_key_counts_only_as_a_whole_number(tiny_lm, monkeypatch):
    """Written-out cases of the scoring rule (the key must appear, not inside a longer number)."""
    keys, real = [], Passkey.build
    monkeypatch.setattr(
        Passkey, "build", lambda self, lm, L, seed: (lambda d: keys.append(d["key"]) or d)(real(self, lm, L, seed))
    )
    answers = iter([(" {k}.", 1), ("1{k}", 0), ("{k}7 then", 0), ("{k}0 and then {k}!", 1)])
    expected = []

    def decode(ids):
        text, ok = next(answers)
        expected.append(ok)
        return text.format(k=keys[len(expected) - 1])

    monkeypatch.setattr(tiny_lm, "decode", decode)
    res = Passkey(context_length=(200,), samples=4, max_new_tokens=2).run(TaskContext(lm=tiny_lm))
    assert [row["correct"] for row in res.samples] == expected == [1, 0, 0, 1]
