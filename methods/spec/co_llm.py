from __future__ import annotations

import copy
import hashlib
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from harness.interfaces import LMMethod
from harness.registry import register
from harness.methods.spec._common import CachedModel, decoding_loop, load_draft, probs

FIT_TEXT_SEED, VALID_SEED = 737373, 838383  # training-side seeds (< EVAL_SEED_BASE)
WEIGHTS = "base.safetensors"


def marginal_nll(s: torch.Tensor, logp_base: torch.Tensor, logp_asst: torch.Tensor) -> torch.Tensor:
    """−mean_t log[(1 − π_t)·p_base(x_t) + π_t·p_asst(x_t)], π_t = σ(s_t); s, logp_* [...] per token
    (log-space: log(1 − σ(s)) = logσ(−s))."""
    return -torch.logaddexp(F.logsigmoid(-s) + logp_base, F.logsigmoid(s) + logp_asst).mean()


def weak_labels(base_argmax: torch.Tensor, asst_argmax: torch.Tensor, gold: torch.Tensor) -> torch.Tensor:
    """Z_t = 1 iff the assistant's argmax is the gold token and the base model's is not."""
    return ((asst_argmax == gold) & (base_argmax != gold)).float()


def hidden_and_logits(model, ids: torch.Tensor, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """The last hidden state h (the LM head's input) and the logits of a causal LM."""
    h = model.get_decoder()(input_ids=ids, **kw).last_hidden_state
    return h, model.get_output_embeddings()(h)


class CachedBase(CachedModel):
    """The base model stepped through its cache, returning (h, logits) of the last position."""

    @torch.no_grad()
    def step_hidden(self, tokens: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = torch.tensor([tokens], device=self.model.device)
        pos = torch.arange(self.length, self.length + len(tokens), device=self.model.device)
        h, logits = hidden_and_logits(
            self.model, ids, past_key_values=self.cache, use_cache=True, position_ids=pos[None], cache_position=pos
        )
        self.length += len(tokens)
        return h[0, -1].float(), logits[0, -1]


@register
@dataclass
class CoLLM(LMMethod):
    """Co-LLM — Shen et al., "Learning to Decode Collaboratively with Multiple Language Models"
    (ACL 2024, arXiv:2403.03870); implemented from the paper and notes on clinicalml/co-llm @d83ab8c.

    A latent variable Z_t picks who writes token t: π_t = P(Z_t = 1) = σ(ω·h_t), h_t the base
    model's last hidden state, ω one extra LM-head row (its logit outside the base softmax).
    `harness fit` trains on training-side rows of the zoo's training mix (harness.zoo.rows), the
    assistant (the LM under evaluation) frozen: (1) ω alone, from the mean output embedding, by BCE
    (positive weight `pos_weight`) on weak labels Z_t = [assistant argmax = gold ≠ base argmax],
    `init_steps` at `init_lr`; (2) ω and every base parameter by the marginal likelihood
    −mean_t log[(1 − π_t)·p_base(x_t) + π_t·p_asst(x_t)], `epochs` over `fit_rows` rows of
    `fit_length` tokens, batch `batch` (paper: 128), lr `lr` linear with 4% warmup (epochs 0: the
    weak-label-only ablation). η is then chosen on `eta_examples` validation rows among the π
    quantiles at deferral rates 0, 0.1, …, 1 by the accuracy of the collaborative next-token pick
    against the gold token, teacher-forced (the paper scores decoded answers; this project's
    choice); ties go to the lower deferral rate. Defaults on the zoo pair: 87 CPU-s (228 s wall on
    the shared 2-core machine). Decoding: if π_t > η the assistant writes one token (its greedy
    one at T = 0), else the base (argmax). NOT lossless: the output is neither model's own. At
    T > 0 the chosen model's token is sampled (not in the paper). `eta` overrides the fitted η.

    base: the base model that decides (zoo:tiny-llama-draft; same tokenizer as the assistant).
    """

    name = "co_llm"
    family = "spec"
    paper = "Learning to Decode Collaboratively with Multiple Language Models (arXiv:2403.03870)"
    patches = frozenset({"decoding"})
    lossless = False
    fit_version = "1"
    smoke_args = {
        "base": "{model}",
        **dict(init_steps="3", epochs="1", fit_rows="4", fit_length="16", batch="2", eta_examples="2"),
    }
    ranges = {
        "eta": "[0, 1]",
        "pos_weight": "(0, inf)",
        "init_steps": "[0, inf)",
        "init_lr": "(0, inf)",
        "epochs": "[0, inf)",
        "lr": "(0, inf)",
        "batch": "[1, inf)",
        "fit_rows": "[1, inf)",
        "fit_length": "[2, inf)",
        "eta_examples": "[1, inf)",
    }
    model_params = ("base",)
    base: str = field(default="zoo:tiny-llama-draft", metadata={"help": "base model (the LM is the assistant)"})
    eta: float | None = field(default=None, metadata={"help": "deferral threshold (None: chosen at fit)"})
    pos_weight: float = field(default=8.0, metadata={"help": "BCE weight of weak-label positives"})
    init_steps: int = field(default=8000, metadata={"help": "weak-label steps on ω alone"})
    init_lr: float = 2e-5
    epochs: int = field(default=2, metadata={"help": "marginal-likelihood epochs (0: weak labels only)"})
    lr: float = field(default=2e-5, metadata={"help": "peak lr, linear decay, 4% warmup"})
    batch: int = 16
    fit_rows: int = 1024
    fit_length: int = 128
    eta_examples: int = field(default=15, metadata={"help": "validation rows for choosing η"})

    # -- fit stage ---------------------------------------------------------------------------------
    def needs_fit(self, lm, ctx) -> bool:
        return True

    def fit_params(self, lm, ctx) -> dict:
        from harness.models import identity as model_identity

        keys = ("pos_weight", "init_steps", "init_lr", "epochs", "lr", "batch", "fit_rows", "fit_length")
        return dict(
            {k: getattr(self, k) for k in keys + ("eta_examples",)},
            base=self.base,
            base_sha256=model_identity(self.base)[1],
        )

    def _rows(self, lm, seed: int, n: int) -> torch.Tensor:
        """Training-side rows of the zoo's own training mix (haystack text with key: value facts and
        their recall, copy spans, passkeys; harness.zoo.rows), `fit_length` tokens each."""
        from harness.zoo.rows import RowMaker
        from harness.zoo.train import Recipe

        return RowMaker(lm.tokenizer, seed).batch(self.fit_length, n, Recipe())[0]

    def fit_data_hash(self, lm, ctx) -> str:
        data = torch.cat([self._rows(lm, FIT_TEXT_SEED, self.fit_rows), self._rows(lm, VALID_SEED, self.eta_examples)])
        return hashlib.sha256(data.numpy().tobytes()).hexdigest()

    @torch.no_grad()
    def _assistant(self, lm, rows):
        """log p_asst(gold) and the assistant's argmax at every position (precomputed, frozen)."""
        logits = lm.model(input_ids=rows).logits[:, :-1].float()
        return torch.log_softmax(logits, -1).gather(-1, rows[:, 1:, None])[..., 0], logits.argmax(-1)

    def _base(self, base, omega, rows):
        """π's logit s = ω·h, log p_base(gold) and the base argmax."""
        h, logits = hidden_and_logits(base, rows[:, :-1])
        logp = torch.log_softmax(logits.float(), -1)
        return h.float() @ omega, logp.gather(-1, rows[:, 1:, None])[..., 0], logits.argmax(-1)

    def fit(self, lm, ctx, log=print):
        torch.manual_seed(ctx.seed)
        dev = lm.device
        base = copy.deepcopy(load_draft(self.base, lm, self.name))
        rows, valid = (
            self._rows(lm, FIT_TEXT_SEED, self.fit_rows).to(dev),
            self._rows(lm, VALID_SEED, self.eta_examples),
        )
        valid = valid.to(dev)
        lp_asst, am_asst = self._assistant(lm, rows)
        v_asst, v_am = self._assistant(lm, valid)
        t0, n_params = time.perf_counter(), sum(p.numel() for p in base.parameters())
        # (1) ω alone on weak labels, the base frozen: its h and argmax precomputed
        omega = base.get_output_embeddings().weight.detach().float().mean(0).clone().requires_grad_(True)
        with torch.no_grad():
            h, logits = hidden_and_logits(base, rows[:, :-1])
            z = weak_labels(logits.argmax(-1), am_asst, rows[:, 1:])
        opt = torch.optim.AdamW([omega], lr=self.init_lr, weight_decay=0.0)
        bce_weight, trace = torch.tensor(self.pos_weight), []
        for step in range(self.init_steps):
            i = (step * self.batch) % len(rows)
            loss = F.binary_cross_entropy_with_logits(
                h[i : i + self.batch].float() @ omega, z[i : i + self.batch], pos_weight=bce_weight
            )
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % 1000 == 0 or step == self.init_steps - 1:
                trace.append({"stage": "weak", "step": step, "bce": round(loss.item(), 4)})
        with torch.no_grad():
            before = marginal_nll(*self._base(base, omega, valid)[:2], v_asst).item()
        # (2) ω and the whole base on the marginal likelihood, the assistant frozen
        base.train()
        params = [omega, *base.parameters()]
        opt = torch.optim.AdamW(params, lr=self.lr, weight_decay=0.0)
        total = self.epochs * -(-len(rows) // self.batch)
        warm = max(1, round(0.04 * total))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda k: (k + 1) / warm if k < warm else max(0.0, (total - k) / max(1, total - warm))
        )
        for step in range(total):
            i = (step * self.batch) % len(rows)
            s, lp_base, _ = self._base(base, omega, rows[i : i + self.batch])
            loss = marginal_nll(s, lp_base, lp_asst[i : i + self.batch])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if step % 20 == 0 or step == total - 1:
                trace.append({"stage": "marginal", "step": step, "nll": round(loss.item(), 4)})
                log(f"co_llm step {step + 1}/{total}: marginal nll {loss.item():.4f}")
        base.eval()
        with torch.no_grad():
            s, lp_base, am_base = self._base(base, omega, valid)
            after = marginal_nll(s, lp_base, v_asst).item()
            pi, gold = torch.sigmoid(s).flatten(), valid[:, 1:].flatten()
            picks = []
            for q in [k / 10 for k in range(11)]:  # thresholds at deferral-rate quantiles 0, 0.1, …, 1
                eta = float(torch.quantile(pi, 1 - q))
                defer = pi > eta
                pick = torch.where(defer, v_am.flatten(), am_base.flatten())
                picks.append(
                    {
                        "quantile": q,
                        "eta": eta,
                        "deferral_rate": defer.float().mean().item(),
                        "accuracy": (pick == gold).float().mean().item(),
                    }
                )
        best = max(picks, key=lambda p: (p["accuracy"], -p["deferral_rate"]))
        seconds = round(time.perf_counter() - t0, 1)
        log(
            f"co_llm: validation marginal nll {before:.4f} -> {after:.4f}; eta {best['eta']:.4f} "
            f"(deferral {best['deferral_rate']:.3f}, accuracy {best['accuracy']:.3f}); {seconds} s"
        )
        payload = {
            "trained": f"ω ({omega.numel()} values) and all {n_params} base parameters; assistant frozen",
            "weak_label_rate": z.mean().item(),
            "valid_nll_weak_only": before,
            "valid_nll": after,
            "valid_nll_base": -lp_base.mean().item(),
            "valid_nll_assistant": -v_asst.mean().item(),
            "eta_candidates": picks,
            "eta": best["eta"],
            "trace": trace,
            "train_seconds": seconds,
        }

        def write(folder):  # save_model: the base's embeddings and LM head may be one tied tensor
            from safetensors.torch import save_file, save_model

            save_model(base.cpu(), str(folder / WEIGHTS))
            save_file({"omega": omega.detach().cpu()}, str(folder / "omega.safetensors"))

        return payload, write

    def use_artifact(self, payload, folder) -> None:
        from safetensors.torch import load_file

        self._fitted = {
            "file": str(folder / WEIGHTS),
            "omega": load_file(str(folder / "omega.safetensors"))["omega"],
            "eta": payload["eta"],
            "trained": payload["trained"],
            "fit_seconds": payload.get("fit_seconds"),
            "fit_cpu_seconds": payload.get("fit_cpu_seconds"),
        }

    def resolved(self, lm, ctx) -> dict:
        f = getattr(self, "_fitted", {})
        keys = ("trained", "fit_seconds", "fit_cpu_seconds")
        return {"eta": self.threshold(), **{k: f[k] for k in keys if f.get(k) is not None}}

    def threshold(self) -> float:
        return self.eta if self.eta is not None else self._fitted["eta"]

    def base_model(self, lm):
        """The fitted base model (its weights from the artifact when it holds a file)."""
        from safetensors.torch import load_model

        model = copy.deepcopy(load_draft(self.base, lm, self.name))
        if self._fitted.get("file"):
            load_model(model, self._fitted["file"], device=str(lm.device))
        return model.eval()

    # -- collaborative decoding --------------------------------------------------------------------
    def apply(self, lm, ctx):
        base_lm, eta, eos, tel = self.base_model(lm), self.threshold(), lm.tokenizer.eos_token_id, lm.telemetry
        omega = self._fitted["omega"].to(lm.device)

        def generate_one(prompt, max_new, temperature, gen):
            base, asst, seq, out = CachedBase(base_lm), CachedModel(lm.model), list(prompt), []
            h, logits = base.step_hidden(seq)
            tel["draft_forwards"] += 1
            while True:
                deferred = float(torch.sigmoid(h @ omega)) > eta
                if deferred:  # the assistant catches up on every token since its last call
                    logits = asst.step(seq[asst.length :])[-1]
                    tel["target_forwards"] += 1
                tel["deferral_decisions"] += 1
                tel["deferred_tokens"] += deferred
                token = int(probs(logits, temperature).multinomial(1, generator=gen))
                out.append(token)
                seq.append(token)
                if len(out) >= max_new or token == eos:
                    return out
                h, logits = base.step_hidden([token])
                tel["draft_forwards"] += 1

        return decoding_loop(lm, generate_one)

    def check_effect(self, lm, ctx, result):
        return None if lm.telemetry["deferral_decisions"] else "the collaborative decoding loop never ran"
