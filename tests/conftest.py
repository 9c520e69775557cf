import os

import pytest
import torch

os.environ.setdefault("HARNESS_CACHE", "/tmp/harness-test-cache")


def make_tiny_llama(folder, kv_heads=2, max_pos=128, seed=0, **config):
    """A random-init tiny Llama with the zoo tokenizer, saved in HF format (safetensors)."""
    from harness.zoo.tokenizer import build_tokenizer
    from harness.zoo.train import Recipe, build_model

    tok = build_tokenizer()
    torch.manual_seed(seed)
    recipe = Recipe(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                    num_key_value_heads=kv_heads, context_length=max_pos)
    model = build_model(recipe, len(tok), tok.pad_token_id)
    for key, value in config.items():
        setattr(model.config, key, value)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_model_with(tmp_path_factory, tiny_model):
    """tiny_model_with(**config): the tiny model, or a variant with extra config fields (cached)."""
    made = {}

    def get(**config):
        if not config:
            return tiny_model
        key = tuple(sorted(config.items()))
        if key not in made:
            made[key] = make_tiny_llama(tmp_path_factory.mktemp("tiny-variant"), **config)
        return made[key]
    return get


@pytest.fixture(scope="session")
def tiny_lm(tiny_model):
    from harness.lm import LM
    from harness.models import load
    return LM(load(tiny_model, "cpu"), batch_size=4)
