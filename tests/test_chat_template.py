"""--apply-chat-template: generation prompts through the tokenizer's chat template, recorded in the
record and the run id; refused where it cannot apply (a tokenizer without a template, a task that
scores text as it is)."""

import pytest

from harness import models, records, runner
from harness.errors import UserError
from harness.lm import LM
from harness.loading import LoadOptions
from tests.conftest import make_tiny_llama

TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}<|user|> {{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)
USER = "Some special magic numbers are hidden within the following text.\nWhat is the number?"
ANSWER = "\nAnswer: the special magic number for mootsket:"


@pytest.fixture(scope="module")
def chat_model(tmp_path_factory):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = tmp_path_factory.mktemp("chat-llama")
    make_tiny_llama(folder, max_pos=512)
    tok = AutoTokenizer.from_pretrained(folder)
    tok.add_special_tokens({"additional_special_tokens": ["<|user|>", "<|assistant|>", "<|end|>"]})
    tok.chat_template = TEMPLATE
    model = AutoModelForCausalLM.from_pretrained(folder)
    model.resize_token_embeddings(len(tok))
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def test_plain_prompts_are_prefix_plus_the_whole_text(chat_model):
    lm = LM(models.load(chat_model, "cpu"))
    assert lm.prompt_ids(USER, ANSWER) == lm.prompt_prefix() + lm.encode(USER + ANSWER)


def test_chat_prompt_is_the_rendered_template_then_the_answer(chat_model):
    lm = LM(models.load(chat_model, "cpu"), chat_template=True)
    tok = lm.tokenizer
    text = tok.apply_chat_template([{"role": "user", "content": USER}], tokenize=False, add_generation_prompt=True)
    want = tok(text + ANSWER.lstrip(), add_special_tokens=False)["input_ids"]
    got = lm.prompt_ids(USER, ANSWER)
    assert got == want
    assert tok.convert_ids_to_tokens(got[:2]) == ["<s>", "<|user|>"] and "<|assistant|>" in tok.decode(got)


def test_needle_record_keeps_the_flag_and_a_different_run_id(chat_model, tmp_path):
    args = {"context_length": "160", "depths": "1", "samples_per_depth": "1", "max_new_tokens": "4"}
    paths = []
    for chat in (False, True):
        cells = runner.resolve(
            ["needle"], ["baseline"], chat_model, args, {}, limit=1, loading=LoadOptions(chat_template=chat)
        )
        paths.append(runner.evaluate(cells, device="cpu", out=tmp_path)[0].path)
    plain, chat = (records.read(p) for p in paths)
    assert plain["run_id"] != chat["run_id"]
    assert chat["model"]["loading"]["chat_template"] is True and "loading" not in plain["model"]
    assert chat["model"]["prompt"]["chat_template"] is True
    assert chat["model"]["prompt"]["prefix_tokens"][:2] == ["<s>", "<|user|>"]  # the template's BOS and turn
    assert plain["model"]["prompt"] == {"prefix_tokens": [], "chat_template": False}  # the zoo tokenizer: no BOS
    row = records.read_samples(paths[1])[0]
    assert row["prompt_tokens"] <= 160 - 4


def test_refused_without_a_template_or_for_a_scoring_task(chat_model, tiny_model):
    with pytest.raises(UserError, match="has no chat template"):
        LM(models.load(tiny_model, "cpu"), chat_template=True)
    with pytest.raises(UserError, match="scores text as it is"):
        runner.resolve(["perplexity"], ["baseline"], chat_model, {}, {}, loading=LoadOptions(chat_template=True))
