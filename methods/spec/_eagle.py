"""EAGLE's draft head (shared by eagle and eagle2, which use the same weights): fc(concat(token
embedding, target feature)) -> one Llama decoder layer -> the target's frozen LM head, trained as a
fit stage with feature regression + token loss; plus the drafting state that steps it."""

from __future__ import annotations

import copy
import hashlib
import math
import time
from dataclasses import dataclass, field
from types import SimpleNamespace

import torch
from torch import nn

from harness.interfaces import LMMethod
from harness.methods.spec._common import CachedModel, append_accepted, decoding_loop, probs
from harness.methods.spec._tree import Tree, tree_forward, tree_step
from harness.synthetic import Corpus

FIT_TEXT_SEED = 636363  # training-side seed (< EVAL_SEED_BASE): the head never sees evaluation text
HELD_OUT_SEED = 737373


class EagleHead(nn.Module):
    """fc: Linear(2·hidden → hidden) on concat(embedding of token t+1, feature f_t), then one Llama
    decoder layer (the body is a 1-layer LlamaModel, whose final RMSNorm matches the target's
    features, which are taken after the target's own final norm)."""

    def __init__(self, config):
        super().__init__()
        from transformers import LlamaModel

        cfg = copy.deepcopy(config)
        cfg.num_hidden_layers, cfg.vocab_size, cfg.pad_token_id = 1, 1, 0
        self.fc = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size)
        self.body = LlamaModel(cfg)
        self.body.embed_tokens.requires_grad_(False)  # unused: inputs come as embeddings

    def forward(self, embeds, feats, **kw):
        x = self.fc(torch.cat([embeds, feats.to(embeds.dtype)], dim=-1))
        return self.body(inputs_embeds=x, **kw).last_hidden_state


class HeadLM(nn.Module):
    """The head as a causal LM for CachedModel / tree_forward: token ids in, logits out, with the
    features of each input set in `features` before the call and the head's output in `hidden`."""

    def __init__(self, head: EagleHead, target):
        super().__init__()
        self.head, self.embed, self.lm_head = head, target.get_input_embeddings(), target.get_output_embeddings()
        self.features: torch.Tensor | None = None
        self.hidden: torch.Tensor | None = None

    @property
    def device(self):
        return self.lm_head.weight.device

    def forward(self, input_ids, **kw):
        self.hidden = self.head(self.embed(input_ids), self.features, **kw)
        return SimpleNamespace(logits=self.lm_head(self.hidden))


class HeadState:
    """The head's cache over the committed pairs (token seq[i+1], target feature f_i), and level-wise
    forwards over a draft tree whose node j gets its parent's head output as its feature."""

    def __init__(self, head_lm: HeadLM):
        self.lm, self.cached = head_lm, CachedModel(head_lm)

    def sync(self, seq: list[int], feats: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Feed the new committed pairs; returns (logits, head feature) after the last one: the draft
        distribution of the token after seq."""
        start, end = self.cached.length, len(seq) - 1
        self.lm.features = torch.stack(feats[start:end])[None]
        logits = self.cached.step(seq[start + 1 : end + 1])
        self.root = self.lm.hidden[0, -1]
        return logits[-1], self.root

    def forward_tree(self, tree: Tree) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits and head features after every node of tree (one head forward), cache cut back."""
        hidden = getattr(self, "node_hidden", None)
        feats = [self.root if p < 0 else hidden[p] for p in tree.parents]
        self.lm.features = torch.stack(feats)[None]
        committed = self.cached.length
        logits = tree_forward(self.cached, [], tree)
        self.cached.crop(committed)
        self.node_hidden = self.lm.hidden[0]
        return logits, self.node_hidden


@dataclass
class EagleBase(LMMethod):
    """Fit stage and decoding loop of EAGLE / EAGLE-2; subclasses define `draft(state, root_logits,
    depth, tel, temperature, gen) -> Tree` (the static tree or the dynamic one) and count head
    forwards there. The verification is `verify_tree`: a node added with its draft distribution q
    is accepted with min(1, p/q) (EAGLE-1), one added without q with probability p (EAGLE-2)."""

    family = "spec"
    patches = frozenset({"decoding"})
    fit_version = "1"
    fit_name = "eagle"  # eagle2 reuses eagle's head: one artifact for both
    smoke_args = {"fit_steps": "2", "fit_sequences": "4", "fit_seq_len": "16"}
    ranges = {
        "fit_steps": "[1, inf)",
        "fit_sequences": "[1, inf)",
        "fit_seq_len": "[1, inf)",
        "fit_batch": "[1, inf)",
        "lr": "(0, inf)",
        "v_w": "[0, inf)",
        "p_w": "[0, inf)",
        "noise": "[0, inf)",
    }  # checked by params.build before any model loads
    fit_steps: int = field(default=1000, metadata={"help": "head training steps"})
    fit_sequences: int = field(default=512, metadata={"help": "training sequences of synthetic text"})
    fit_seq_len: int = 64
    fit_batch: int = 8
    lr: float = field(default=1e-3, metadata={"help": "AdamW learning rate (this project's choice for a tiny head)"})
    v_w: float = field(default=1.0, metadata={"help": "feature regression weight (EAGLE: 1.0)"})
    p_w: float = field(default=0.1, metadata={"help": "token loss weight (EAGLE: 0.1)"})
    noise: float = field(default=0.2, metadata={"help": "uniform input-feature noise U(-n/2, n/2)"})

    # -- fit stage ---------------------------------------------------------------------------------
    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        return {
            k: getattr(self, k)
            for k in ("fit_steps", "fit_sequences", "fit_seq_len", "fit_batch", "lr", "v_w", "p_w", "noise")
        }

    def _text(self, lm, seed: int, n: int) -> torch.Tensor:
        corpus, ids, need = Corpus(seed), [], n * self.fit_seq_len
        while len(ids) < need:
            ids += lm.encode(" " + corpus.text(50))
        return torch.tensor(ids[:need]).view(n, self.fit_seq_len)

    def fit_data_hash(self, lm, ctx) -> str:
        return hashlib.sha256(self._text(lm, FIT_TEXT_SEED, self.fit_sequences).numpy().tobytes()).hexdigest()

    @torch.no_grad()
    def _features(self, lm, ids):
        out = []
        for chunk in ids.split(32):
            out.append(lm.model.model(input_ids=chunk.to(lm.device)).last_hidden_state.float())
        return torch.cat(out)

    def _loss(self, head, lm, ids, feats, noise: float):
        emb = lm.model.get_input_embeddings()(ids[:, 1:])
        inp = feats[:, :-1] + (torch.rand_like(feats[:, :-1]) - 0.5) * noise
        pred = head(emb, inp)
        target = feats[:, 1:]
        lm_head = lm.model.get_output_embeddings()
        logp = torch.log_softmax(lm_head(pred), -1)
        with torch.no_grad():
            p = torch.softmax(lm_head(target), -1)
        v_loss = nn.functional.smooth_l1_loss(pred, target)
        p_loss = -(p * logp).sum(-1).mean()
        agree = (logp.argmax(-1) == p.argmax(-1)).float().mean()
        return self.v_w * v_loss + self.p_w * p_loss, v_loss, p_loss, agree

    def fit(self, lm, ctx, log=print):
        torch.manual_seed(ctx.seed)
        lm.model.requires_grad_(False)
        ids = self._text(lm, FIT_TEXT_SEED, self.fit_sequences).to(lm.device)
        held = self._text(lm, HELD_OUT_SEED, 16).to(lm.device)
        feats, held_feats = self._features(lm, ids), self._features(lm, held)
        head = EagleHead(lm.model.config).to(lm.device)
        opt = torch.optim.AdamW([p for p in head.parameters() if p.requires_grad], lr=self.lr)
        t0, trace = time.perf_counter(), []
        for step in range(self.fit_steps):
            batch = torch.randint(0, len(ids), (self.fit_batch,))
            loss, v, p, agree = self._loss(head, lm, ids[batch], feats[batch], self.noise)
            opt.zero_grad()
            loss.backward()
            opt.step()
            for g in opt.param_groups:  # cosine decay to 10 %
                g["lr"] = self.lr * (0.55 + 0.45 * math.cos(math.pi * (step + 1) / self.fit_steps))
            if step % 100 == 0 or step == self.fit_steps - 1:
                trace.append({"step": step, "loss": loss.item(), "feature_loss": v.item(), "token_loss": p.item()})
                log(
                    f"{self.name} head step {step + 1}/{self.fit_steps}: loss {loss.item():.4f} "
                    f"(feature {v.item():.4f}, token {p.item():.3f}, top-1 agreement {agree.item():.3f})"
                )
        with torch.no_grad():
            _, v, p, agree = self._loss(head, lm, held, held_feats, 0.0)
        state = {k: v.detach().cpu().contiguous() for k, v in head.state_dict().items()}

        def write(folder):
            from safetensors.torch import save_file

            save_file(state, str(folder / "head.safetensors"))

        return (
            {
                "held_out_top1_agreement": float(agree),
                "held_out_feature_loss": float(v),
                "held_out_token_loss": float(p),
                "trace": trace,
                "train_seconds": round(time.perf_counter() - t0, 1),
                "parameters": sum(x.numel() for x in state.values()),
            },
            write,
        )

    def use_artifact(self, payload, folder) -> None:
        from safetensors.torch import load_file

        self._head_state, self._fit_info = load_file(str(folder / "head.safetensors")), payload

    # -- decoding ----------------------------------------------------------------------------------
    def apply(self, lm, ctx):
        head = EagleHead(lm.model.config).to(lm.device)
        head.load_state_dict(self._head_state)
        head_lm = HeadLM(head.eval(), lm.model)
        eos, tel = lm.tokenizer.eos_token_id, lm.telemetry
        captured = {}

        def generate_one(prompt, max_new, temperature, gen):
            hook = lm.model.model.register_forward_hook(lambda m, a, out: captured.update(h=out.last_hidden_state[0]))
            try:
                target, state, seq = CachedModel(lm.model), HeadState(head_lm), list(prompt)
                seq.append(int(probs(target.step(seq)[-1], temperature).multinomial(1, generator=gen)))
                tel["target_forwards"] += 1
                feats = list(captured["h"])
                while len(seq) - len(prompt) < max_new and seq[-1] != eos:
                    with torch.no_grad():
                        root_logits, _ = state.sync(seq, feats)
                    tel["draft_forwards"] += 1
                    depth = min(self.max_depth, max_new - (len(seq) - len(prompt)))
                    tree = self.draft(state, root_logits, depth, tel, temperature, gen)
                    tail = len(seq) - target.length
                    new, path = tree_step(target, seq, tree, temperature, gen, tel, probs)
                    feats += list(captured["h"][:tail]) + [captured["h"][tail + j] for j in path]
                    append_accepted(seq, new, eos, len(prompt) + max_new)
                return seq[len(prompt) :][:max_new]
            finally:
                hook.remove()

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["tree_nodes"] else "the EAGLE head proposed no tree nodes"
