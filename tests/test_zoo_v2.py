"""Zoo round 2 (issue 24): the byte-level BPE, one BOS convention, the varied training rows, the
distilled draft's loss, and the zoo generation carried by models, cards, records, leaderboard and
reports (the committed round-1 models keep loading with their own tokenizer)."""

import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from harness import models, params, registry
from harness.zoo import registry as zoo
from harness.zoo.rows import RowMaker
from harness.zoo.tokenizer import BPE_FILE, build_tokenizer
from harness.zoo.train import RECIPES, Recipe, build_model

PROSE = Path(__file__).parent / "data" / "prose_haystack.txt"
TEXTS = [
    "The quick brown fox jumps over the lazy dog, doesn't it? Yes -- (mostly).",
    "Crème brûlée in Zürich: naïve façade, São Paulo, Łódź, smörgåsbord.",
    "日本語のテキストと中文，한국어 문장도.",
    "emoji 😀🎉 and flags 🇫🇷, a ZWJ family 👩‍👩‍👧",
    "  leading spaces,\ttabs\r\nand trailing newlines\n\n",
    PROSE.read_text()[:2000],
]


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer(2)


def _random_texts(n: int) -> list[str]:
    rng = random.Random(7)
    out = []
    for _ in range(n):
        raw = bytes(rng.randrange(256) for _ in range(rng.randint(1, 80))).decode("utf-8", errors="replace")
        code_points = "".join(
            chr(rng.choice([rng.randrange(0x20, 0xD800), rng.randrange(0xE000, 0x10FFFF)])) for _ in range(20)
        )
        out.append(raw + code_points)
    return out


# -- the tokenizer ---------------------------------------------------------------------------------
def test_bpe_round_trip_without_unknown_tokens(tok):
    assert tok.unk_token_id is None and len(tok) == 4096
    for text in TEXTS + _random_texts(200):
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == text, repr(text)
        assert all(0 <= i < len(tok) for i in ids)
        assert not set(ids) & {tok.pad_token_id, tok.bos_token_id, tok.eos_token_id}


def test_digits_are_one_token_each(tok):
    ids = tok(" 6298129.", add_special_tokens=False)["input_ids"]
    pieces = tok.convert_ids_to_tokens(ids)
    assert pieces[-8:-1] == list("6298129") and len(ids) == 9  # the space, 7 digits, the period


def test_saved_tokenizer_loads_with_auto_classes(tok, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    assert isinstance(again, PreTrainedTokenizerFast)
    assert (again.pad_token, again.bos_token, again.eos_token) == ("<pad>", "<s>", "</s>")
    for text in TEXTS:
        assert again(text)["input_ids"] == tok(text)["input_ids"]
        assert again.decode(again(text, add_special_tokens=False)["input_ids"]) == text


@pytest.mark.slow
def test_bpe_training_reproduces_the_committed_file():
    """The committed tokenizer_v2.json is what train_bpe() gives from its fixed text, every time."""
    from harness.zoo.tokenizer import train_bpe

    assert json.loads(train_bpe().to_str()) == json.loads(BPE_FILE.read_text())


V1_VOCAB_SHA256 = "066410660265bc96f2000e70e24c77c6cf29db3b677269b678168d18b358e1f5"  # round 1's tiny-llama's


def test_v1_tokenizer_is_still_the_word_level_one():
    """The v1 tokenizer is the one the v1 models were trained with (the vocabulary of round 1's
    committed tiny-llama, hashed: that model has been retrained on v2)."""
    vocab = build_tokenizer(1).get_vocab()
    assert len(vocab) == 4548
    assert hashlib.sha256(json.dumps(vocab, sort_keys=True).encode()).hexdigest() == V1_VOCAB_SHA256
    with pytest.raises(ValueError, match="version 9"):
        build_tokenizer(9)


# -- one BOS convention ------------------------------------------------------------------------------
def _tiny_v2_folder(tmp_path, tok):
    recipe = Recipe(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        context_length=1024,
    )
    torch.manual_seed(0)
    build_model(recipe, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id).save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    return str(tmp_path)


def test_harness_and_lm_eval_encode_prompts_as_training_did(tok, tmp_path):
    """BOS first everywhere: training rows, the harness's prompts, lm-eval's default encoding; and a
    needle-shaped training row, decoded, is re-encoded by the harness to the very same ids."""
    from harness.lm import LM
    from tasks.lm_eval._adapter import HarnessAdapter

    lm = LM(models.load(_tiny_v2_folder(tmp_path, tok), "cpu"))
    bos = tok.bos_token_id
    assert lm.prompt_prefix() == [bos]
    assert lm.prompt_format()["prefix_tokens"] == ["<s>"]
    text = " Remember the special magic number for mootsket: 6298129."
    assert HarnessAdapter(lm).tok_encode(text) == [bos] + lm.encode(
        text
    )  # lm-eval's default (add_special_tokens unset)
    maker = RowMaker(tok, 3)
    recipe = replace(RECIPES["tiny-llama"], plain_frac=0.0, random_fact_frac=0.5)
    for _ in range(6):
        ids, mask = maker.row(512, 1, 1, recipe)
        assert ids[0] == bos and ids.count(bos) == 1
        prompt = ids[: mask.index(1)]  # up to the answer: what the needle task's prompt holds
        assert lm.prompt_ids(tok.decode(prompt[1:])) == prompt


def test_v1_rows_keep_round_one_shape(tok):
    """The word-level tokenizer adds nothing: v1 rows (and the fitting methods' rows) have no BOS,
    and Recipe()'s rows are exactly round 1's (hash taken from the round-1 code)."""
    v1 = build_tokenizer(1)
    assert RowMaker(v1, 0).prefix == [] and RowMaker(tok, 0).prefix == [tok.bos_token_id]
    h = hashlib.sha256()
    for length in (64, 512):
        ids, mask = RowMaker(v1, 123).batch(length, 24, Recipe())
        h.update(str(ids.tolist()).encode() + str(mask.tolist()).encode())
    assert h.hexdigest() == "cac8ad8fdc0ef6cffa161f9d8d202c50eba35bf25cab1d306de7bc5bcd1a3413"


# -- training rows -----------------------------------------------------------------------------------
def test_v2_batches_are_seeded_shaped_and_masked(tok):
    recipe = RECIPES["tiny-llama"]
    a_ids, a_mask = RowMaker(tok, 11).batch(256, 32, recipe)
    b_ids, b_mask = RowMaker(tok, 11).batch(256, 32, recipe)
    c_ids, _ = RowMaker(tok, 12).batch(256, 32, recipe)
    assert torch.equal(a_ids, b_ids) and torch.equal(a_mask, b_mask) and not torch.equal(a_ids, c_ids)
    assert a_ids.shape == a_mask.shape == (32, 256)
    assert set(a_mask.unique().tolist()) <= {0, 1}
    assert (a_ids[:, 0] == tok.bos_token_id).all() and (a_ids[:, 1:] != tok.bos_token_id).all()
    plain = [i for i in range(32) if a_mask[i].sum() == 0]
    assert plain and len(plain) < 32  # plain LM rows and supervised rows both occur


def test_needle_rows_answer_the_asked_values_with_varied_keys(tok):
    maker = RowMaker(tok, 5)
    recipe = replace(RECIPES["tiny-llama"], random_fact_frac=1.0)
    keys = set()
    for _ in range(8):
        ids, mask = maker.row(512, 4, 4, recipe)
        text = tok.decode(ids[1:])
        runs, prev = [], 0
        for t, m in zip(ids, mask):  # the answer spans: runs of masked tokens
            if m and prev:
                runs[-1].append(t)
            elif m:
                runs.append([t])
            prev = m
        answers = [tok.decode(r) for r in runs]
        assert len(answers) == 4
        for ans in answers:  # each answer (" value.") follows its key's needle in the haystack
            value = ans.strip().rstrip(".")
            assert value and f": {value}." in text.split("\nWhat is")[0]
        keys |= {line.split("for ")[1].split(":")[0] for line in text.split("Remember the special magic number ")[1:]}
    from harness.synthetic import LEXICON

    assert keys - set(LEXICON.keys)  # keys beyond the corpus' own key words


def test_v2_haystacks_draw_on_every_generator(tok):
    from harness.zoo.generators import Filler, Foreign, Noise, Prose

    for cls in (Prose, Foreign, Noise):
        a, b, c = cls(4), cls(4), cls(5)
        first = [a.sentence() for _ in range(5)]
        assert first == [b.sentence() for _ in range(5)] != [c.sentence() for _ in range(5)]
    foreign = Foreign(1)
    assert any(ord(ch) > 0x2000 for ch in " ".join(foreign.sentence() for _ in range(20)))  # beyond Latin
    filler = Filler(0, {"corpus": 0.25, "prose": 0.25, "foreign": 0.25, "noise": 0.25})
    assert {filler.source().__self__.__class__.__name__ for _ in range(100)} == {"Corpus", "Prose", "Foreign", "Noise"}
    with pytest.raises(ValueError, match="unknown filler"):
        Filler(0, {"poetry": 1.0})


# -- recipes and distillation -----------------------------------------------------------------------
def test_v2_recipes():
    t, d = RECIPES["tiny-llama"], RECIPES["tiny-llama-draft"]
    assert t.plain_frac == pytest.approx(0.2) and t.random_fact_frac > 0 and t.prose_frac > 0
    assert (d.hidden_size, d.num_hidden_layers, d.distill_from) == (t.hidden_size, 2, "tiny-llama")
    assert d.plain_frac > 0.5  # mostly plain text: the draft serves speculative decoding on text
    assert RECIPES["tiny-llama-alibi"] == replace(t, position="alibi")
    assert RECIPES["tiny-llama-cla"] == replace(t, kv_share=2)


def test_distillation_loss_is_the_kl_to_the_teacher(tok):
    from harness.zoo.train import weighted_loss

    recipe = Recipe(
        hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2
    )
    torch.manual_seed(0)
    student = build_model(recipe, len(tok), tok.pad_token_id)
    other = build_model(recipe, len(tok), tok.pad_token_id)
    ids, mask = RowMaker(tok, 1).batch(64, 2, RECIPES["tiny-llama-draft"])
    same, _, _ = weighted_loss(student, ids, mask, 0.1, teacher=student, distill_weight=1.0)
    assert abs(same.item()) < 1e-5  # KL of a distribution to itself
    far, _, _ = weighted_loss(student, ids, mask, 0.1, teacher=other, distill_weight=1.0)
    assert far.item() > 1e-4
    ce, _, _ = weighted_loss(student, ids, mask, 0.1)
    half, _, _ = weighted_loss(student, ids, mask, 0.1, teacher=other, distill_weight=0.5)
    assert half.item() == pytest.approx(0.5 * ce.item() + 0.5 * far.item(), rel=1e-4)


def test_distilling_from_an_older_generation_is_refused():
    from harness.errors import UserError
    from harness.zoo.train import load_teacher

    if zoo.version_of(zoo.card("tiny-llama")) == zoo.ZOO_VERSION:
        pytest.skip("the committed tiny-llama is already of the current zoo generation")
    with pytest.raises(UserError, match="train it first"):
        load_teacher(RECIPES["tiny-llama-draft"])


# -- the zoo generation in cards, records, leaderboard and reports ---------------------------------
def test_generation_of_cards_configs_and_records():
    assert zoo.ZOO_VERSION == 2
    assert zoo.version_of({}) == 1 and zoo.version_of({"zoo_version": 2}) == 2
    loaded = models.load("zoo:tiny-llama-draft", "cpu")  # committed round-1 model: its own tokenizer
    assert models.zoo_version(loaded) == {"zoo_version": zoo.version_of(loaded.model.config)}
    old = {"id": "zoo:tiny-llama", "zoo": True}
    assert zoo.model_key(old) == "zoo:tiny-llama (zoo v1)"
    assert zoo.model_key(dict(old, zoo_version=2)) == "zoo:tiny-llama"
    assert zoo.model_key({"id": "hf:gpt2", "zoo": False}) == "hf:gpt2"


def _needle_record(version, value):
    from tests.leaderboard_data import metric, record

    rec = record(
        "needle",
        "baseline",
        {"accuracy": metric(value)},
        "accuracy",
        family="baseline",
        params={"context_length": [512]},
    )
    if version:
        rec["model"]["zoo_version"] = version
    rec["run_id"] = f"gen{version or 1}{rec['run_id'][4:]}"
    return rec


def test_leaderboard_and_report_keep_generations_apart(tmp_path):
    from harness import report
    from harness.leaderboard import loader
    from tests.leaderboard_data import put

    old, new = _needle_record(None, 0.2), _needle_record(2, 0.9)
    put(tmp_path, old)
    put(tmp_path, new)
    runs = loader.load(tmp_path).runs
    assert sorted(r.model for r in runs) == ["zoo:tiny-llama", "zoo:tiny-llama (zoo v1)"]
    _, rows = report.table([old, new], "accuracy")
    values = {label: {L: c.value for L, c in cells.items()} for label, cells in rows.items()}
    assert values == {"baseline (zoo:tiny-llama (zoo v1))": {512: 0.2}, "baseline (zoo:tiny-llama)": {512: 0.9}}
    # one generation in a table: rows are not marked one by one, a line under the table says it
    text = report.markdown("needle", [old], "accuracy")
    assert "| baseline | 0.20 |" in text and "Every row comes from a zoo v1 model" in text
    text = report.markdown("needle", [new], "accuracy")
    assert "| baseline | 0.90 |" in text and "Every row comes from" not in text


def test_zoo_list_names_each_models_generation(capsys):
    from harness.cli import main

    assert main(["zoo", "list"]) == 0
    out = capsys.readouterr().out
    for name in zoo.names():
        v = zoo.version_of(zoo.card(name))
        line = next(x for x in out.splitlines() if f"zoo:{name} " in x)
        if v < zoo.ZOO_VERSION:
            assert f"v{v} — recipe is now v{zoo.ZOO_VERSION}, retrain with `harness zoo train {name}`" in line
        else:
            assert f" v{v} " in line


def test_card_template_names_the_tokenizer():
    from harness.zoo.build import render_card

    card = json.loads((zoo.ZOO_DIR / "tiny-llama" / "card.json").read_text())
    v1 = {k: v for k, v in card.items() if k not in ("zoo_version", "tokenizer", "bos")}
    assert "word-level synthetic tokenizer" in render_card(v1)  # a v1 card (no zoo_version) stays v1
    v2 = dict(card, zoo_version=2, tokenizer="byte-level BPE, 4,096 tokens", bos="<s> first")
    text = render_card(v2)
    assert "word-level" not in text and "byte-level BPE" in text and "| zoo version | 2 |" in text


@pytest.mark.slow
def test_train_and_save_records_the_generation(tmp_path):
    """A minute-sized run of the v2 recipe end to end: config.json and the card say zoo v2, BPE, BOS."""
    from transformers import AutoConfig

    from harness.zoo.build import train_and_save

    tiny = {
        "hidden_size": "32",
        "intermediate_size": "64",
        "num_hidden_layers": "1",
        "num_attention_heads": "2",
        "num_key_value_heads": "2",
        "context_length": "128",
        "curriculum": "64,128",
        "steps": "4",
        "tokens_per_step": "512",
        "warmup": "1",
    }
    folder = train_and_save("tiny-llama", tmp_path / "m", log=lambda *_: None, overrides=tiny)
    assert AutoConfig.from_pretrained(folder).zoo_version == 2
    card = json.loads((folder / "card.json").read_text())
    assert card["zoo_version"] == 2 and card["vocab_size"] == 4096 and card["bos"].startswith("<s>")
    # measured at the recipe's own length, and labelled so (the keys said 512 whatever the length)
    assert set(card["evaluation"]) == {
        "perplexity@128",
        "needle_accuracy@128",
        "needle_accuracy_prose@128",
        "needle_accuracy_prose@256",
    }
    assert "context_length=128," in card["evaluation_protocol"]["needle"]
    assert "byte-level BPE" in (folder / "README.md").read_text()
    assert not (folder / "checkpoint.pt").exists()  # a finished run leaves no checkpoint behind


# -- needle on prose the model never saw ---------------------------------------------------------------
@pytest.mark.slow
def test_needle_on_a_prose_haystack():
    """tiny-llama on hand-written English prose (tests/data/prose_haystack.txt) it never saw: at its
    training length 512 (0.94 on the card's 100 prompts; v1 scored 0.00), and at 1k, twice that,
    through yarn (about 0.7; alone the model scores 0.00 there, as any RoPE model past its length)."""
    from harness.interfaces import MethodContext, TaskContext
    from harness.lm import LM
    from harness.tasks.needle import Needle

    if zoo.version_of(zoo.card("tiny-llama")) < 2:
        pytest.skip("the committed zoo:tiny-llama is zoo v1 (closed word-level vocabulary): retrain it")
    lm = LM(models.load("zoo:tiny-llama", "cpu"))
    res = Needle(context_length=(512,), haystack=str(PROSE), samples_per_depth=4).run(TaskContext(lm=lm))
    assert res.metrics["accuracy"].n == 40 and res.metrics["accuracy"].value >= 0.8
    yarn = params.build(registry.method("yarn"), {}, "method yarn")
    with yarn.apply(lm, MethodContext(target_length=1024)):
        res = Needle(context_length=(1024,), haystack=str(PROSE), samples_per_depth=4).run(TaskContext(lm=lm))
    assert res.metrics["accuracy"].n == 40 and res.metrics["accuracy"].value >= 0.5


def test_a_zoo_models_record_names_its_generation(tmp_path):
    """The record of a run on a zoo model carries model.zoo_version; the leaderboard keys it by it."""
    from harness import records, runner
    from harness.leaderboard import loader

    args = {"context_length": "96", "depths": "1", "samples_per_depth": "1", "max_new_tokens": "2"}
    cells = runner.resolve(["needle"], ["baseline"], "zoo:tiny-llama-draft", args, {}, limit=1)
    rec = records.read(runner.evaluate(cells, device="cpu", out=tmp_path)[0].path)
    version = zoo.version_of(zoo.card("tiny-llama-draft"))
    assert rec["model"]["zoo"] is True and rec["model"]["zoo_version"] == version
    (run,) = loader.load(tmp_path).runs
    assert run.model == "zoo:tiny-llama-draft" + ("" if version == zoo.ZOO_VERSION else f" (zoo v{version})")


def test_v2_recipes_fit_the_zoos_48_mb(tok):
    """Every v2 recipe's float32 weights together stay within test_zoo's 48 MB for the committed zoo
    (four models of about 10 MB and the 7 MB draft: a clone stays small)."""
    total = 0
    for recipe in RECIPES.values():
        model = build_model(recipe, len(tok), tok.pad_token_id, tok.bos_token_id, tok.eos_token_id)
        total += 4 * sum(p.numel() for p in model.parameters())
    assert total <= 48 * 1024 * 1024, total / 2**20


def test_training_probe_scores_the_committed_model_like_the_needle_task():
    """The in-training probe (loss curves' probe_needle_acc) must be able to see retrieval: with too
    few new tokens for a 7-digit value at one token per digit it scored every model 0, this one
    (needle 0.995 at 512 on the task) included."""
    from harness.models import load
    from harness.zoo.train import quick_needle_accuracy

    lm = load("zoo:tiny-llama", "cpu")
    with torch.no_grad():
        acc = quick_needle_accuracy(lm.model, lm.tokenizer, 512, depths=3, per_depth=1)
    assert acc >= 2 / 3
