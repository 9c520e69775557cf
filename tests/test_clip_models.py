"""The CLIP-family backbones: open_clip's tokenizer (through harness.backbones.clip.tokenize) against
transformers' CLIPTokenizer on the same vocabulary, an open_clip CLIP loaded by the harness from a
checkpoint in OpenAI's layout against transformers' CLIPModel on the same weights, and ViCLIP
(backbones/viclip.py: no library has it) against a slow loop reference and the release's layout."""

import gzip
import math

import pytest
import torch

from harness.backbones import viclip as vc
from harness.backbones.clip import load_clip, tokenize
from harness.errors import UserError

open_clip = pytest.importorskip("open_clip")
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
    "The camera pans left, Van Gogh style",
]


def test_tokenizer_matches_transformers_cliptokenizer_on_the_same_vocabulary():
    from transformers import CLIPTokenizer

    tok = open_clip.tokenizer.SimpleTokenizer()
    lines = gzip.open(open_clip.tokenizer.default_bpe()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
    # open_clip spells the special tokens <start_of_text>/<end_of_text>; their ids are OpenAI's 49406/49407
    names = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {names.get(k, k): v for k, v in tok.encoder.items()}
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407
    peer = CLIPTokenizer(vocab=vocab, merges=[tuple(m.split()) for m in lines])
    for text in TEXTS:
        ids = tokenize(text)[0]
        assert ids[: int((ids != 0).sum())].tolist() == peer(text)["input_ids"], text


def test_tokenizer_hand_checked_ids_and_truncation():
    # OpenAI CLIP's well-known ids: <|startoftext|> a photo of a cat <|endoftext|>, zero padding to 77
    ids = tokenize("A  photo of a CAT")
    assert ids.shape == (1, 77) and ids[0, :7].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407]
    assert ids[0, 7:].eq(0).all()
    long = " ".join(["cat"] * 80)
    with pytest.raises(UserError, match="longer than CLIP's context"):  # as OpenAI's clip.tokenize
        tokenize(long)
    cut = tokenize(long, context_length=32, truncate=True)[0]  # ViCLIP: last id becomes end-of-text
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


def tiny_clip(vocab: int = 1000):
    """An open_clip CLIP in OpenAI's configuration (QuickGELU, class-token pooling), tiny."""
    vision = dict(image_size=224, layers=2, width=64, patch_size=32, head_width=16)
    text = dict(context_length=77, vocab_size=vocab, width=32, heads=4, layers=2)
    return open_clip.model.CLIP(48, vision, text, quick_gelu=True).eval()


def test_open_clip_loaded_from_an_openai_checkpoint_matches_transformers_clipmodel(tmp_path):
    from transformers import CLIPConfig, CLIPModel

    torch.manual_seed(0)
    src = tiny_clip()
    for p in src.parameters():
        torch.nn.init.normal_(p, std=0.1)
    with torch.no_grad():
        src.logit_scale.fill_(2.0)
    sd = src.state_dict()
    # the checkpoint in OpenAI's layout, DataParallel prefix and the ints its TorchScript keeps included
    ckpt = {f"module.{k}": v for k, v in sd.items()} | {
        "input_resolution": torch.tensor(224),
        "context_length": torch.tensor(77),
        "vocab_size": torch.tensor(1000),
    }
    torch.save(ckpt, tmp_path / "ViT-B-32.pt")
    net = load_clip(tiny_clip(), tmp_path / "ViT-B-32.pt", "t")
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
        per_text = (
            net.logit_scale.exp() * net.encode_text(ids, normalize=True) @ net.encode_image(images, normalize=True).t()
        )
        ref = hf(input_ids=ids, pixel_values=images)
        visual = load_clip(tiny_clip(), tmp_path / "ViT-B-32.pt", "t", "visual")(images)
    assert torch.allclose(per_text, ref.logits_per_text, atol=1e-5)
    # the visual tower alone, as the consistency tasks load it (transformers' image_embeds are normalised)
    assert torch.allclose(torch.nn.functional.normalize(visual, dim=-1), ref.image_embeds, atol=1e-5)
    assert per_text.abs().max() > 0.1  # not a degenerate comparison
    torch.save({"visual.conv1.weight": sd["visual.conv1.weight"]}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="does not match open_clip's CLIP layout"):
        load_clip(tiny_clip(), tmp_path / "bad.pt", "t")


def test_default_architectures_have_the_released_parameter_counts():
    from harness.backbones.clip import create_clip

    b32 = create_clip("ViT-B-32")
    with torch.device("meta"):
        l14 = open_clip.model.CLIP(**open_clip.get_model_config("ViT-L-14"), quick_gelu=True)
    assert sum(p.numel() for p in b32.visual.parameters()) == 87849216  # OpenAI CLIP ViT-B/32 visual tower
    assert sum(p.numel() for p in b32.parameters()) == 151277313  # the whole ViT-B/32
    assert sum(p.numel() for p in l14.visual.parameters()) == 303966208  # ViT-L/14 visual tower
    assert type(b32.visual.transformer.resblocks[0].mlp.gelu).__name__ == "QuickGELU"  # OpenAI's activation
    with pytest.raises(UserError, match="no checkpoint 'nope' of ViT-B-32"):
        create_clip("ViT-B-32", "nope")


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
    ids = tokenize(["a cat", "a dog running"], context_length=32, truncate=True)
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
