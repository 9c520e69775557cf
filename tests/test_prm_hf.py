"""hf_prm and hf_orm on tiny random-initialised Hugging Face models built here (no hub access):
each read-out against a slow reference that runs one unpadded forward per step/solution and
locates the read-out position independently (RLHFlow's index -3 for the chat convention)."""

import pytest
import torch

from harness.methods.prm import _common
from harness.methods.prm.hf_orm import HFORM
from harness.methods.prm.hf_prm import HFPRM

CHAT = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
SPECIAL = ["<pad>", "<s>", "</s>", "<unk>", "ки", "<extra_0>", "<|user|>", "<|assistant|>", "<|system|>", "<|end|>"]


def char_tokenizer():
    """Characters as tokens, plus the PRM markers as single tokens."""
    from tokenizers import Regex, Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(SPECIAL + [chr(c) for c in range(32, 127)] + ["\n"])}
    tk = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    pattern = "|".join(__import__("re").escape(s) for s in SPECIAL[4:]) + r"|[\s\S]"
    tk.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok = PreTrainedTokenizerFast(
        tokenizer_object=tk, unk_token="<unk>", pad_token="<pad>", bos_token="<s>", eos_token="</s>"
    )
    tok.chat_template = CHAT
    return tok


def build(folder, head):
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification, LlamaForTokenClassification

    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        pad_token_id=tok.pad_token_id,
        num_labels=2 if head == "token" else 1,
    )
    torch.manual_seed(0)
    cls = {"causal": LlamaForCausalLM, "token": LlamaForTokenClassification, "seq": LlamaForSequenceClassification}[
        head
    ]
    model = cls(cfg)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder), model.eval(), tok


PROBLEM = "Ann has 3 pens. She buys 4 more. How many?"
POOL = [
    ["She buys 4 more: 3 + 4 = 7.", "The answer is \\boxed{7}."],
    ["3 + 4 = 8.", "So 8.", "The answer is \\boxed{8}."],
    ["\\boxed{7}"],
]


@pytest.fixture(scope="module")
def causal(tmp_path_factory):
    return build(tmp_path_factory.mktemp("prm-causal"), "causal")


def _logits(model, ids):
    with torch.no_grad():
        out = model(input_ids=torch.tensor([ids]))
    return (out.logits if hasattr(out, "logits") else out[0])[0]


@pytest.mark.fidelity(
    "hf_prm",
    reference="one unpadded forward per step, the step tag located independently (Math-Shepherd's convention)",
    tolerance="abs 1e-5",
)
def test_step_tag_matches_per_step_reference(causal):
    folder, model, tok = causal
    prm = HFPRM(model=folder, convention="step_tag", device="cpu", batch_size=2)
    got = prm.score(PROBLEM, POOL)
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    for steps, scores in zip(POOL, got):
        text = PROBLEM + " " + "".join(s + " ки\n" for s in steps)
        logits = _logits(model, tok.encode(text))
        want = []
        for k in range(len(steps)):  # the tag of step k is the last token of the text up to it
            upto = PROBLEM + " " + "".join(s + " ки\n" for s in steps[:k]) + steps[k] + " ки"
            pos = len(tok.encode(upto)) - 1
            want.append(torch.softmax(logits[pos, [good, bad]], -1)[0].item())
        assert scores == pytest.approx(want, abs=1e-5)
    assert len(set(round(x, 6) for s in got for x in s)) > 1


@pytest.mark.fidelity(
    "hf_prm",
    reference="RLHFlow's read-out: a chat-template forward per step, the logits at index −3",
    tolerance="abs 1e-5",
)
def test_chat_matches_rlhflow_index_minus_3(causal):
    folder, model, tok = causal
    prm = HFPRM(model=folder, convention="chat", device="cpu", agg="mean")
    got = prm.score(PROBLEM, POOL)
    good, bad = tok.convert_tokens_to_ids(["+", "-"])
    for steps, scores in zip(POOL, got):
        want = []
        for k in range(len(steps)):
            msgs = []
            for j, s in enumerate(steps[: k + 1]):
                msgs += [
                    {"role": "user", "content": PROBLEM + " " + s if j == 0 else s},
                    {"role": "assistant", "content": "+"},
                ]
            ids = tok.apply_chat_template(msgs, tokenize=False)
            logits = _logits(model, tok.encode(ids, add_special_tokens=False))
            want.append(torch.softmax(logits[-3, [good, bad]], -1)[0].item())
        assert scores == pytest.approx(want, abs=1e-5)
    assert prm.aggregate(got[1]) == pytest.approx(sum(got[1]) / 3)


@pytest.mark.fidelity(
    "hf_prm",
    reference="the model card's <extra_0> form: one forward, the softmax at the separators",
    tolerance="abs 1e-5",
)
def test_token_classification_matches_reference(tmp_path):
    folder, model, tok = build(tmp_path / "tc", "token")
    prm = HFPRM(model=folder, convention="token_classification", device="cpu", batch_size=3, agg="product")
    got = prm.score(PROBLEM, POOL)
    sep = tok.convert_tokens_to_ids("<extra_0>")
    for steps, scores in zip(POOL, got):
        msgs = [
            {"role": "system", "content": prm.system_prompt},
            {"role": "user", "content": PROBLEM},
            {"role": "assistant", "content": "<extra_0>".join(steps) + "<extra_0>"},
        ]  # the card's form
        ids = tok.encode(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
        logits = _logits(model, ids)
        mask = torch.tensor(ids) == sep
        assert scores == pytest.approx(torch.softmax(logits[mask], -1)[:, 1].tolist(), abs=1e-5)


@pytest.mark.fidelity(
    "hf_orm",
    reference="one unpadded chat-template forward per solution, the sequence-classification logit",
    tolerance="abs 1e-5",
)
def test_orm_matches_reference(tmp_path):
    folder, model, tok = build(tmp_path / "orm", "seq")
    orm = HFORM(model=folder, device="cpu", batch_size=2)
    got = orm.score(PROBLEM, POOL)
    for steps, scores in zip(POOL, got):
        msgs = [{"role": "user", "content": PROBLEM}, {"role": "assistant", "content": "\n\n".join(steps)}]
        ids = tok.encode(tok.apply_chat_template(msgs, tokenize=False), add_special_tokens=False)
        assert scores == pytest.approx([_logits(model, ids)[0].item()], abs=1e-5)
    assert 0 < orm.vote_weight(got[0][0]) < 1  # raw logit -> sigmoid for weighted voting


def test_marker_inside_a_step_is_refused(causal):
    from harness.errors import UserError

    prm = HFPRM(model=causal[0], convention="step_tag", device="cpu")
    with pytest.raises(UserError, match="step markers"):
        prm.score(PROBLEM, [["a ки b"]])


@pytest.mark.parametrize("how,want", [("min", 0.2), ("product", 0.2 * 0.9 * 0.5), ("last", 0.5), ("mean", 1.6 / 3)])
def test_aggregations(how, want):
    assert _common.aggregate([0.2, 0.9, 0.5], how) == pytest.approx(want)
    assert _common.aggregate([], how) == -1.0
