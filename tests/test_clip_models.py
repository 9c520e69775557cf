"""The CLIP-family backbones (harness.backbones.clip, clip_tokenizer, viclip): CLIP's tokenizer and
towers against transformers, ViCLIP against a slow loop reference and the release's parameter
layout."""

import gzip
import math

import pytest
import torch

from harness.backbones import clip_tokenizer
from harness.backbones import viclip as vc
from harness.backbones.clip import Clip
from harness.errors import UserError

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# -- (b) tokenizer ---------------------------------------------------------------------------------
TEXTS = [
    "a photo of a cat",
    "Hello, World! it's 2024",
    "café  über   naïve",
    "x²+y³ = z½ ...!!",
    "Iñtërnâtiônàlizætiøn 日本語 emoji 🎉🎉",
    "don't stop'n'roll ''s",
    "A  B\tC\nD",
    "e\u0301 cafe\u0301",
    "a <|endoftext|> b",
    "The camera pans left, Van Gogh style",
]


def test_tokenizer_matches_transformers_cliptokenizer_on_the_same_vocabulary():
    from transformers import CLIPTokenizer

    ours = clip_tokenizer.tokenizer()
    lines = gzip.open(clip_tokenizer.BPE_FILE).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    peer = CLIPTokenizer(vocab=dict(ours.encoder), merges=[tuple(m.split()) for m in lines])
    for text in TEXTS:
        ids = ours(text)[0]
        assert ids[: int((ids != 0).sum())].tolist() == peer(text)["input_ids"], text


def test_tokenizer_hand_checked_ids_cleaning_and_truncation():
    tok = clip_tokenizer.tokenizer()
    # OpenAI CLIP's well-known ids: <|startoftext|> a photo of a cat <|endoftext|>, zero padding to 77
    ids = tok("A  photo of a CAT")
    assert ids.shape == (1, 77) and ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].eq(0).all()
    assert tok.encode("&amp;amp;") == tok.encode("&")  # html.unescape twice
    assert tok.decode(tok.encode("a photo of a cat")) == "a photo of a cat "
    long = " ".join(["cat"] * 80)
    with pytest.raises(UserError, match="longer than CLIP's context"):
        tok(long)
    cut = tok(long, context_length=32, truncate=True)[0]  # ViCLIP: last id becomes end-of-text
    assert cut.tolist() == [49406] + [2368] * 30 + [49407]


# -- (a) CLIP towers against transformers' CLIPModel ------------------------------------------------
VIS = dict(patch=32, width=64, layers=2, heads=4, out=48)
TXT = dict(width=32, layers=2, heads=4, out=48, context=77, vocab=1000)


def openai_to_hf(sd: dict, layers_text: int, layers_vision: int) -> dict:
    """OpenAI/open_clip key layout -> transformers CLIPModel (as its convert_clip_original script)."""
    out = {
        "logit_scale": sd["logit_scale"],
        "text_projection.weight": sd["text_projection"].t(),
        "visual_projection.weight": sd["visual.proj"].t(),
        "text_model.embeddings.token_embedding.weight": sd["token_embedding.weight"],
        "text_model.embeddings.position_embedding.weight": sd["positional_embedding"],
        "text_model.final_layer_norm.weight": sd["ln_final.weight"],
        "text_model.final_layer_norm.bias": sd["ln_final.bias"],
        "vision_model.embeddings.class_embedding": sd["visual.class_embedding"],
        "vision_model.embeddings.patch_embedding.weight": sd["visual.conv1.weight"],
        "vision_model.embeddings.position_embedding.weight": sd["visual.positional_embedding"],
    }
    for ours, theirs in (("ln_pre", "pre_layrnorm"), ("ln_post", "post_layernorm")):
        for q in ("weight", "bias"):
            out[f"vision_model.{theirs}.{q}"] = sd[f"visual.{ours}.{q}"]
    for src, dst, n in (("", "text_model", layers_text), ("visual.", "vision_model", layers_vision)):
        for i in range(n):
            a, b = f"{src}transformer.resblocks.{i}.", f"{dst}.encoder.layers.{i}."
            for q in ("weight", "bias"):
                for name, w in zip("qkv", sd[a + f"attn.in_proj_{q}"].chunk(3)):
                    out[b + f"self_attn.{name}_proj.{q}"] = w
                for s, d in (
                    ("attn.out_proj", "self_attn.out_proj"),
                    ("ln_1", "layer_norm1"),
                    ("ln_2", "layer_norm2"),
                    ("mlp.c_fc", "mlp.fc1"),
                    ("mlp.c_proj", "mlp.fc2"),
                ):
                    out[b + f"{d}.{q}"] = sd[a + f"{s}.{q}"]
    return out


def test_clip_image_and_text_towers_match_transformers_clipmodel():
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    src = Clip(VIS, TXT)
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.1)
    with torch.no_grad():
        src.logit_scale.fill_(2.0)
    # the checkpoint in OpenAI's layout (text tower at top level), with the ints its TorchScript keeps
    sd = {(k[5:] if k.startswith("text.") else k): v for k, v in src.state_dict().items()}
    ckpt = {f"module.{k}": v for k, v in sd.items()} | {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(1000),
    }
    net = Clip(VIS, TXT).load_checkpoint(ckpt, "t", "ckpt").eval()
    cfg = CLIPConfig(
        text_config=dict(
            vocab_size=1000,
            hidden_size=32,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            eos_token_id=999,
            bos_token_id=998,
            pad_token_id=0,
            projection_dim=48,
        ),
        vision_config=dict(
            hidden_size=64,
            intermediate_size=256,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=224,
            patch_size=32,
            hidden_act="quick_gelu",
            projection_dim=48,
        ),
        projection_dim=48,
    )
    hf = CLIPModel(cfg).eval()
    missing, unexpected = hf.load_state_dict(openai_to_hf(sd, 2, 2), strict=False)
    assert not missing and not unexpected
    ids = torch.zeros(3, 77, dtype=torch.long)
    g = torch.Generator().manual_seed(1)
    for row, n in enumerate((5, 9, 3)):  # sot, random ids, eot (the largest id), padding
        ids[row, 0], ids[row, n - 1] = 998, 999
        ids[row, 1 : n - 1] = torch.randint(1, 990, (n - 2,), generator=g)
    images = torch.randn(2, 3, 224, 224, generator=g)
    with torch.no_grad():
        per_image, per_text = net(images, ids)
        ref = hf(input_ids=ids, pixel_values=images)
    assert torch.allclose(per_image, ref.logits_per_image, atol=1e-5)
    assert torch.allclose(per_text, ref.logits_per_text, atol=1e-5)
    assert per_image.abs().max() > 0.1  # not a degenerate comparison
    with pytest.raises(UserError, match="does not match the CLIP layout"):
        Clip(VIS, TXT).load_checkpoint({"visual.conv1.weight": sd["visual.conv1.weight"]}, "t", "bad")


# -- (d) ViCLIP against a slow reference ------------------------------------------------------------
TINY_V = dict(patch=8, width=16, layers=2, heads=2, out=12, frames=8, resolution=32)
TINY_T = dict(width=16, layers=1, heads=2, out=12, context=32, vocab=49408)


def slow_block(x, blk, heads):
    """One CLIP residual block on [N, D] tokens, attention head by head with explicit softmax."""

    def ln(v, m):
        return (v - v.mean(-1, keepdim=True)) / torch.sqrt(
            v.var(-1, unbiased=False, keepdim=True) + m.eps
        ) * m.weight + m.bias

    d = x.shape[1]
    h = ln(x, blk.ln_1)
    q, k, v = (h @ blk.attn.in_proj_weight.t() + blk.attn.in_proj_bias).split(d, -1)
    dh = d // heads
    outs = []
    for i in range(heads):
        s = slice(i * dh, (i + 1) * dh)
        w = torch.softmax(q[:, s] @ k[:, s].t() / math.sqrt(dh), -1)
        outs.append(w @ v[:, s])
    x = x + torch.cat(outs, -1) @ blk.attn.out_proj.weight.t() + blk.attn.out_proj.bias
    m = ln(x, blk.ln_2) @ blk.mlp.c_fc.weight.t() + blk.mlp.c_fc.bias
    return x + (m * torch.sigmoid(1.702 * m)) @ blk.mlp.c_proj.weight.t() + blk.mlp.c_proj.bias


def slow_viclip_video(net: vc.ViClipVision, video: torch.Tensor, heads: int) -> torch.Tensor:
    """video [T, 3, H, W]: every patch of every frame embedded one by one, + spatial position (1 + n)
    + temporal position t, in (n, t) order after one class token (class_embedding + position 0)."""
    t, _, hh, ww = video.shape
    p = net.conv1.weight.shape[-1]
    w2d = net.conv1.weight[:, :, 0]
    temporal = net.temporal_positional_embedding[0]
    temporal = temporal.mean(0, keepdim=True).expand(t, -1) if t == 1 else temporal
    tokens = [net.class_embedding + net.positional_embedding[0]]
    for n in range((hh // p) * (ww // p)):
        r, c = divmod(n, ww // p)
        for f in range(t):
            patch = video[f, :, r * p : (r + 1) * p, c * p : (c + 1) * p]
            tokens.append((w2d * patch).sum((1, 2, 3)) + net.positional_embedding[1 + n] + temporal[f])
    x = torch.nn.functional.layer_norm(torch.stack(tokens), (tokens[0].shape[0],), net.ln_pre.weight, net.ln_pre.bias)
    for blk in net.transformer.resblocks:
        x = slow_block(x, blk, heads)
    return net.ln_post(x[0]) @ net.proj


def test_viclip_vision_matches_slow_space_time_reference_and_loads_the_release_layout(tmp_path):
    torch.manual_seed(0)
    net = vc.ViClip(TINY_V, TINY_T).eval()
    with torch.no_grad():
        net.vision_encoder.temporal_positional_embedding.normal_()  # released weights are non-zero
        video = torch.randn(2, 8, 3, 32, 32)
        fast = net.encode_vision(video)
        one = net.encode_vision(video[:1, :1])  # single-frame path
        for b in range(2):
            assert torch.allclose(fast[b], slow_viclip_video(net.vision_encoder, video[b], 2), atol=1e-5)
        assert torch.allclose(one[0], slow_viclip_video(net.vision_encoder, video[0, :1], 2), atol=1e-5)
        # the temporal embedding makes frame order matter (space-time attention alone would not)
        assert not torch.allclose(net.encode_vision(video[:1].flip(1)), fast[:1], atol=1e-4)
    # VBench: torch.load(path)["model"] with vision_encoder.*, text_encoder.*, temp, loaded strictly
    torch.save({"model": net.state_dict()}, tmp_path / "viclip.pth")
    loaded = vc.load_viclip(tmp_path / "viclip.pth", "t", TINY_V, TINY_T).eval()
    ids = clip_tokenizer.tokenizer()(["a cat", "a dog running"], context_length=32, truncate=True)
    with torch.no_grad():
        assert torch.allclose(loaded.encode_vision(video), fast, atol=1e-6)
        assert torch.allclose(loaded.encode_text(ids), net.encode_text(ids), atol=1e-6)
    assert {"vision_encoder.temporal_positional_embedding", "text_encoder.text_projection", "temp"} <= set(
        net.state_dict()
    )
    torch.save({"model": {"temp": net.temp}}, tmp_path / "bad.pth")
    with pytest.raises(UserError, match="does not match"):
        vc.load_viclip(tmp_path / "bad.pth", "t", TINY_V, TINY_T)


def test_viclip_l14_parameter_layout():
    with torch.device("meta"):
        vision = vc.ViClipVision(**vc.VICLIP_L14)
    assert vision.conv1.weight.shape == (1024, 3, 1, 14, 14) and vision.conv1.bias is None
    assert vision.positional_embedding.shape == (257, 1024)
    assert vision.temporal_positional_embedding.shape == (1, 8, 1024) and vision.proj.shape == (1024, 768)
    assert len(vision.transformer.resblocks) == 24
