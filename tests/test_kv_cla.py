"""CLA (Cross-Layer Attention): a tiny random CLA model's logits against a slow literal transcription
of the equations; the KV cache (transformers' and the kv engine's) holds the producing layers only and
generating through it equals full recomputation; the layout saves and loads without K/V weights for
the reusing layers; plain models are refused; the zoo recipe trains it."""

import math

import pytest
import torch
from safetensors import safe_open
from transformers import DynamicCache, LlamaConfig

from harness import cla, records, registry, runner
from harness.errors import Refused, UserError
from harness.interfaces import MethodContext
from harness.lm import LM, KVRequest
from harness.models import load

registry.load()


def tiny_config(layers=5, heads=4, kv_heads=2, hidden=16):
    return LlamaConfig(
        vocab_size=40,
        hidden_size=hidden,
        intermediate_size=24,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        max_position_embeddings=64,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
        rms_norm_eps=1e-6,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def tiny_cla(sharing=2, seed=0, **kw):
    torch.manual_seed(seed)
    model = cla.build(tiny_config(**kw), sharing).eval()
    with torch.no_grad():  # RMSNorm weights start at 1: perturb them so that the test sees them
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.3 * torch.randn_like(p))
    return model


# -- (a) the equations, one token, layer and head at a time --------------------------------------------
def literal_logits(model, ids: list[int]) -> torch.Tensor:
    """Llama with CLA from the equations, in float64 Python loops. Per layer l: h = RMSNorm(x);
    q_i = W_Q h_i rotated at position i; a group's first layer computes k_i = RoPE(W_K h_i), v_i = W_V h_i
    and the other layers of the group use those same k, v (the producer's); head j attends with
    softmax_t(q_i·k_t / √d), t ≤ i, over its KV head j // (H / H_kv); x += W_O [heads]; x += W_down
    (silu(W_gate h') * W_up h'), h' = RMSNorm(x); logits = W_lm RMSNorm(x)."""
    cfg = model.config
    sd = {k: v.double() for k, v in model.state_dict().items()}
    H, Hkv, s = cfg.num_attention_heads, cfg.num_key_value_heads, cla.kv_sharing(cfg)
    d = cfg.hidden_size // H
    theta, eps = cfg.rope_parameters["rope_theta"], cfg.rms_norm_eps

    def rmsnorm(x, w):
        return x / math.sqrt(sum(float(e) ** 2 for e in x) / len(x) + eps) * w

    def rope(vec, pos):  # rotate-half: dimension t pairs with t + d/2 at angle pos·θ^(−2t/d)
        out = vec.clone()
        for t in range(d // 2):
            a = pos * theta ** (-2 * t / d)
            x1, x2 = vec[t], vec[t + d // 2]
            out[t] = x1 * math.cos(a) - x2 * math.sin(a)
            out[t + d // 2] = x2 * math.cos(a) + x1 * math.sin(a)
        return out

    xs = [sd["model.embed_tokens.weight"][i].clone() for i in ids]
    shared = {}
    for layer in range(cfg.num_hidden_layers):
        p = f"model.layers.{layer}."
        hs = [rmsnorm(x, sd[p + "input_layernorm.weight"]) for x in xs]
        if layer % s == 0:  # the group's producer: its own keys and values, kept for the group
            keys = [
                [rope((sd[p + "self_attn.k_proj.weight"] @ h)[j * d : (j + 1) * d], i) for j in range(Hkv)]
                for i, h in enumerate(hs)
            ]
            values = [[(sd[p + "self_attn.v_proj.weight"] @ h)[j * d : (j + 1) * d] for j in range(Hkv)] for h in hs]
            shared = {"k": keys, "v": values}
        keys, values = shared["k"], shared["v"]
        new = []
        for i, h in enumerate(hs):
            q = sd[p + "self_attn.q_proj.weight"] @ h
            heads = []
            for j in range(H):
                qj = rope(q[j * d : (j + 1) * d], i)
                g = j // (H // Hkv)
                scores = torch.stack([qj @ keys[t][g] / math.sqrt(d) for t in range(i + 1)])
                w = torch.softmax(scores, 0)
                heads.append(sum(w[t] * values[t][g] for t in range(i + 1)))
            x = xs[i] + sd[p + "self_attn.o_proj.weight"] @ torch.cat(heads)
            h2 = rmsnorm(x, sd[p + "post_attention_layernorm.weight"])
            gate = sd[p + "mlp.gate_proj.weight"] @ h2
            x = x + sd[p + "mlp.down_proj.weight"] @ (gate * torch.sigmoid(gate) * (sd[p + "mlp.up_proj.weight"] @ h2))
            new.append(x)
        xs = new
    return torch.stack([sd["lm_head.weight"] @ rmsnorm(x, sd["model.norm.weight"]) for x in xs])


@pytest.mark.fidelity(
    "cla",
    reference="slow literal transcription: RMSNorm, q/k/v projections, rotate-half RoPE, the group's "
    "first layer's K/V reused by the others, softmax attention, SwiGLU MLP, one token and head at a time",
    tolerance="float64, abs 1e-6 (transformers computes the RoPE cos/sin in float32)",
)
@pytest.mark.parametrize("sharing", [2, 3])
def test_logits_equal_the_literal_equations(sharing):
    model = tiny_cla(sharing).double()
    ids = [3, 17, 5, 5, 29, 1, 38, 11]
    with torch.no_grad():
        got = model(input_ids=torch.tensor([ids])).logits[0]
    torch.testing.assert_close(got, literal_logits(model, ids), rtol=0, atol=1e-6)


def test_reusing_layers_have_no_kv_projections():
    model = tiny_cla(2)
    for i, layer in enumerate(model.model.layers):
        attn = layer.self_attn
        assert hasattr(attn, "k_proj") == hasattr(attn, "v_proj") == (i % 2 == 0), i
        assert cla.kv_source(attn) == i - i % 2
    assert [m.layer_idx for m in cla.reusing_layers(model)] == [1, 3]


def test_padding_mask_is_respected():
    """A left-padded row gives the unpadded row's logits at its real positions (reusers use the mask too)."""
    model = tiny_cla(2)
    ids = torch.tensor([[5, 9, 2, 30, 7, 7, 1]])
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3, dtype=torch.long), torch.ones_like(ids)], dim=1)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        ref = model(input_ids=ids).logits
        got = model(input_ids=padded, attention_mask=mask, position_ids=positions).logits[:, 3:]
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


# -- (b) the cache --------------------------------------------------------------------------------
def test_generation_with_the_cache_equals_recomputation_and_caches_producers_only():
    model = tiny_cla(2)
    prompt = torch.tensor([[4, 8, 15, 16, 23, 3]])
    with torch.no_grad():
        cached = model.generate(prompt, max_new_tokens=10, do_sample=False, min_new_tokens=10, pad_token_id=0)
        ids = prompt
        for _ in range(10):  # full recomputation, no cache, one token at a time
            nxt = model(input_ids=ids, use_cache=False).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        assert torch.equal(cached, ids)
        cache = DynamicCache(config=model.config)
        model(input_ids=ids, past_key_values=cache, use_cache=True)
    held = [i for i, lay in enumerate(cache.layers) if lay.is_initialized and lay.keys.numel()]
    assert held == cla.producing_layers(model.config) == [0, 2, 4]
    nbytes = sum(cache.layers[i].keys.nbytes + cache.layers[i].values.nbytes for i in held)
    cfg = model.config
    assert nbytes == cla.kv_bytes_per_token(cfg, element_bytes=4) * ids.shape[1]  # float32
    assert nbytes == 2 * cfg.num_key_value_heads * 4 * 3 * 4 * ids.shape[1]  # 2·n_kv·d·(5 layers → 3 producers)·4 B


def test_bytes_per_token_halve_with_pairs():
    plain, pairs = tiny_config(layers=4), tiny_config(layers=4)
    setattr(pairs, cla.CLA_CONFIG_FLAG, 2)
    assert cla.kv_bytes_per_token(plain) == 2 * 2 * 4 * 4 * 2
    assert cla.kv_bytes_per_token(pairs) == cla.kv_bytes_per_token(plain) / 2


@pytest.fixture(scope="module")
def cla_lm(tiny_model_with):
    return LM(load(tiny_model_with(**registry.method("cla").smoke_model_config), "cpu"), batch_size=2)


def test_kv_engine_runs_the_layout_and_counts_producers_only(cla_lm):
    """Through the kv engine (the cla method): the logits equal the model's own forward, decoding
    token by token equals one pass, and the counted bytes are the producing layers' (half)."""
    lm = cla_lm
    ids = lm.encode(" the cat saw a dog and the dog saw a fox , then left the mat .")[:30]
    x = torch.tensor([ids])
    with torch.no_grad():
        ref = lm.model(input_ids=x).logits[0]
    m = registry.method("cla")()
    lm.telemetry.clear()
    with m.apply(lm, MethodContext()):
        lm.kv_request = KVRequest(decode_tokens=12)
        try:
            got = lm.forward_logits(x, torch.ones_like(x))[0]
            generated = lm.generate([ids], 5)
        finally:
            lm.kv_request = KVRequest()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert generated == lm.generate([ids], 5)  # the model's own generate (transformers' cache)
    t = lm.telemetry
    cfg = lm.model.config
    assert t["patched_calls.kv_shared_attention"] > 0
    assert t["kv.bytes"] / t["kv.context_tokens"] == cla.kv_bytes_per_token(cfg)
    plain = 2 * cfg.num_key_value_heads * cla.head_dim(cfg) * cfg.num_hidden_layers * 2
    assert cla.kv_bytes_per_token(cfg) == plain / 2
    assert m.check_effect(lm, MethodContext(), None) is None


def test_kv_compression_reports_bytes_per_token_for_the_dense_row(tiny_model_with, tmp_path):
    model = tiny_model_with(**registry.method("cla").smoke_model_config)
    cells = runner.resolve(
        ["kv_compression"], ["cla"], model, dict(registry.TASKS["kv_compression"].smoke_args), {}, limit=1
    )
    (out,) = runner.evaluate(cells, device="cpu", out=tmp_path)
    rec = records.read(out.path)
    m = rec["metrics"]
    assert rec["details"]["budgets"] == ["dense"]
    cfg = load(model, "cpu").model.config
    assert m["kv_bytes_per_token@dense"]["value"] == cla.kv_bytes_per_token(cfg)
    assert m["kv_bytes_fraction@dense"]["value"] == 1.0 and "nll@dense" in m
    (component,) = rec["method"]["components"]
    assert component["resolved"]["kv_bytes_per_token"] == cla.kv_bytes_per_token(cfg)
    assert component["resolved"]["producing_layers"] == [0]  # the tiny model's 2 layers: one pair


# -- (c) save and load -----------------------------------------------------------------------------
def test_save_and_load_without_new_weights(tmp_path):
    from transformers import LlamaForCausalLM

    model = tiny_cla(2)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        keys = set(f.keys())
    for i in range(5):
        has = {f"model.layers.{i}.self_attn.{p}_proj.weight" in keys for p in "kv"}
        assert has == {i % 2 == 0}, i
    again, info = cla.CLALlamaForCausalLM.from_pretrained(tmp_path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    plain = LlamaForCausalLM(tiny_config())
    removed = 2 * 2 * 16 * (2 * 4)  # layers 1 and 3: k_proj and v_proj, hidden 16 -> 2 KV heads x 4
    assert sum(p.numel() for p in again.parameters()) == sum(p.numel() for p in plain.parameters()) - removed
    from harness.zoo.tokenizer import build_tokenizer

    build_tokenizer().save_pretrained(tmp_path)  # (harness.models loads a folder with its tokenizer)
    loaded = load(str(tmp_path), "cpu").model
    assert isinstance(loaded, cla.CLALlamaForCausalLM)
    x = torch.tensor([[1, 5, 9, 13, 2]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, model(input_ids=x).logits)
    for a, b in zip(loaded.state_dict().items(), model.state_dict().items()):
        assert a[0] == b[0] and torch.equal(a[1], b[1])


# -- (d) refusals ----------------------------------------------------------------------------------
def test_plain_model_is_refused(tiny_lm):
    with pytest.raises(Refused, match="Cross-Layer Attention"):
        registry.method("cla")().apply(tiny_lm, MethodContext())


def test_other_kv_methods_are_refused_on_a_cla_model(tiny_model_with, tmp_path):
    model = tiny_model_with(**registry.method("cla").smoke_model_config)
    args = {"context_length": "64", "n_tokens": "64"}
    cells = runner.resolve(["perplexity"], ["kivi"], model, args, {"residual_length": "16", "group_size": "16"})
    with pytest.raises(Refused, match="--method cla"):
        runner.evaluate(cells, device="cpu", out=tmp_path)
    assert not list(tmp_path.rglob("*.json"))


def test_cli_refusal_exits_2(tiny_model, capsys):
    from harness.cli import main

    code = main(["eval", "--task", "perplexity", "--method", "cla", "--model", tiny_model, "--limit", "1"])
    assert code == 2 and "Cross-Layer Attention" in capsys.readouterr().err


def test_budget_other_than_one_is_a_user_error():
    from harness import params

    with pytest.raises(UserError):
        params.build(registry.method("cla"), {"budget": "0.5"}, "cla")


# -- (e) the zoo recipe --------------------------------------------------------------------------------
def test_zoo_recipe_trains_a_cla_model(tmp_path):
    from harness.zoo.tokenizer import build_tokenizer
    from harness.zoo.train import RECIPES, Recipe, train

    assert RECIPES["tiny-llama-cla"].kv_share == 2
    recipe = Recipe(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=4,
        num_attention_heads=2,
        num_key_value_heads=2,
        context_length=64,
        kv_share=2,
        steps=3,
        tokens_per_step=256,
        curriculum=(64,),
        warmup=1,
    )
    torch.manual_seed(0)
    tok = build_tokenizer()
    from harness.zoo.train import build_model

    torch.manual_seed(recipe.seed)
    start = {k: v.clone() for k, v in build_model(recipe, len(tok), tok.pad_token_id).state_dict().items()}
    model, log = train(recipe, tok)
    assert cla.kv_sharing(model.config) == 2 and len(log) >= 1 and math.isfinite(log[-1]["loss"])
    after = model.state_dict()
    assert set(after) == set(start)
    assert "model.layers.1.self_attn.k_proj.weight" not in after
    for name in ("model.layers.0.self_attn.k_proj.weight", "model.layers.1.self_attn.q_proj.weight"):
        assert not torch.equal(after[name], start[name]), name  # producers' K/V and reusers' Q both learn
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    loaded = load(str(tmp_path), "cpu")
    assert cla.kv_sharing(loaded.model.config) == 2 and len(cla.reusing_layers(loaded.model)) == 2
