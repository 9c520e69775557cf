"""The kv engine's loop: the attention forward patched into every layer (routing to the Run in
progress), the Driver (chunked prefill, compression, decoding, telemetry) and `kv_loop`, the
context that installs both on an LM."""

from __future__ import annotations

import contextlib
import inspect
from collections import Counter
from typing import TYPE_CHECKING

import torch
from harness.methods.kv._rerotation import effective_inv_freq
from harness.methods.kv._run import Run

from harness.attention import _rotary_module, call_arguments, rotate
from harness.projections import attention_modules
from harness.cla import kv_source, reusing_layers
from harness.errors import UserError
from harness.patching import patched_forwards
from harness.projections import projections
from harness.provenance import device_clock

if TYPE_CHECKING:
    from harness.methods.kv._common import KVMethod

PREFILL_CHUNK = 512  # queries per prefill forward
PATCHED = "patched_calls.kv_attention"
SHARED = "patched_calls.kv_shared_attention"  # Cross-Layer Attention reusers (harness.cla) reading a producer's cache
# generated tokens between end-of-sequence checks (one host-device sync each) on an accelerator; on
# the CPU reading a token costs nothing, so it checks every token and decodes nothing past the end
EOS_CHECK_EVERY = 8


class _Engine:
    """Routes the patched attention layers to the Run in progress (None: the model's own forward)."""

    run: Run | None = None


def _attention_forward(engine: _Engine, method: KVMethod, m):
    cls_forward = type(m).forward
    source, sig = kv_source(m), inspect.signature(cls_forward)
    p = projections(m) if source == m.layer_idx else None  # a CLA reuser has no K/V to adapt

    def forward(*args, **kwargs):
        run = engine.run
        if run is None:
            return cls_forward(m, *args, **kwargs)
        a = call_arguments(sig, m, args, kwargs)
        hidden_states, position_embeddings = a["hidden_states"], a["position_embeddings"]
        if p is None:  # a Cross-Layer Attention reuser: no K/V, reads its producer's cache
            b, c = hidden_states.shape[:2]
            q = m.q_proj(hidden_states).view(b, c, -1, m.head_dim).transpose(1, 2)  # only `cla` runs here
            cos, sin = run.shifted_rope(position_embeddings) if run.shift else position_embeddings
            out = run.attend_shared(source, rotate(q, cos, sin), m.scaling)
            return m.o_proj(out.transpose(1, 2).reshape(b, c, -1)), None
        q = method.project_q(m, hidden_states, run)
        k, v = method.project_kv(m, hidden_states, run)
        q, k, v = p.heads_of(q, k, v)  # [b, h, c, d], the family's query/key norms applied
        cos, sin = run.shifted_rope(position_embeddings) if run.shift else position_embeddings
        q, k = rotate(q, cos, sin), rotate(k, cos, sin)
        out = run.attend(m.layer_idx, q, k, v, p.scaling)
        return p.output(out), None

    return forward


def _sample(logits: torch.Tensor, temperature: float, top_p: float, gen) -> torch.Tensor:
    """The next token, a 1-element tensor on the logits' device (reading it would synchronize)."""
    if temperature <= 0:
        return logits.argmax(-1, keepdim=True)
    p = torch.softmax(logits.float() / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, order = p.sort(descending=True)
        drop = sorted_p.cumsum(0) - sorted_p > top_p
        p = p.clone()
        p[order[drop]] = 0
        p = p / p.sum()
    return torch.multinomial(p, 1, generator=gen)


def input_ids(ids: list[int] | torch.Tensor, device) -> torch.Tensor:
    """[1, c] token ids for the model from a list, or from a 1-D tensor already on the device."""
    return ids.view(1, -1) if isinstance(ids, torch.Tensor) else torch.tensor([ids], device=device)


class Driver:
    """The manual loop (prefill, compress, decode) for one LM and one kv method."""

    def __init__(self, lm, method: KVMethod):
        self.lm, self.method, self.engine = lm, method, _Engine()
        self.rotary = _rotary_module(lm.model)
        # rows of the shared cache, in layer order: hybrid models number only some layers' attention
        self.rows = {i: r for r, i in enumerate(sorted({m.layer_idx for m in attention_modules(lm.model)}))} or {0: 0}
        self.clock = device_clock(lm.device)
        # the random draws of a run (Keyformer's Gumbel noise, CaM's merges, GEAR's sketches, sampling):
        # reseeded at every start, so a row's numbers never depend on the rows run before it
        self.generator = torch.Generator()
        self.check_every = 1 if torch.device(lm.device).type == "cpu" else EOS_CHECK_EVERY
        # leading tokens kept in full precision and never evicted (set by modifiers such as intactkv)
        self.protect_prefix = 0

    def _forward(self, run: Run, ids: list[int] | torch.Tensor, all_logits: bool) -> torch.Tensor:
        """ids: a list, or a 1-D tensor on the device (a generated token, fed without reading it)."""
        dev = self.lm.device
        pos = run.positions(len(ids), dev)
        run.shift = self.method.rope_shift(run) if not run.dense else 0
        run.feed(ids)
        out = self.lm.model(
            input_ids=input_ids(ids, dev),
            position_ids=pos[None],
            use_cache=False,
            logits_to_keep=0 if all_logits else 1,
        )
        run.next_pos += len(ids)
        return out.logits[0]

    def budget(self) -> float:
        """The task's budget for these calls (LM.kv_request), else the method's own."""
        asked = self.lm.kv_request.budget
        return self.method.budget if asked is None else asked

    def start(self) -> Run:
        budget = float(self.budget())
        protect = int(self.protect_prefix)
        self.generator.manual_seed(0)
        run = Run(self.method, budget, self.generator, effective_inv_freq(self.rotary), protect, self.rows)
        run.tokenizer = self.lm.tokenizer
        run.clock = self.clock
        return run

    def prefill_forward(self, run: Run, ids: list[int], all_logits: bool) -> tuple[torch.Tensor, int]:
        """Prefill in chunks, then compress; returns (logits, cache bytes held before compressing)."""
        self.engine.run = run
        try:
            outs = [
                self._forward(run, ids[s : s + PREFILL_CHUNK], all_logits) for s in range(0, len(ids), PREFILL_CHUNK)
            ]
            peak = run.held_bytes()
            run.compress_prefill()
        finally:
            self.engine.run = None
        return (torch.cat(outs) if all_logits else outs[-1]), peak

    def decode_forward(self, run: Run, ids: list[int] | torch.Tensor) -> torch.Tensor:
        self.engine.run = run
        try:
            out = self._forward(run, ids, True)
            run.compress_decode_all()
            return out
        finally:
            self.engine.run = None

    @torch.no_grad()
    def prefill(self, run: Run, ids: list[int], all_logits: bool) -> torch.Tensor:
        """Prefill the context and compress it (recorded in telemetry); its logits (all or the last)."""
        t0 = self.clock()
        run.n_context = len(ids)
        logits, peak = self.prefill_forward(run, ids, all_logits)
        run.phase, run.policy_s = "decode", 0.0  # bookkeeping is reported for decoding only
        t = self.lm.telemetry
        n, kept, nbytes, dense = len(ids), run.kept_tokens(), run.bytes(), run.dense_bytes()
        t["kv.calls"] += 1
        t["kv.context_tokens"] += n
        t["kv.kept_tokens"] += kept
        t["kv.bytes"] += nbytes
        t["kv.dense_bytes"] += dense
        if not run.dense:
            t["kv.compressed_calls"] += 1
            t["kv.compressed_context_tokens"] += n
            t["kv.compressed_kept_tokens"] += kept
            t["kv.compressed_bytes"] += nbytes
            t["kv.compressed_dense_bytes"] += dense
        t["kv.peak_cache_bytes"] = max(t["kv.peak_cache_bytes"], peak)
        if run.protect and not run.dense and self.method.budget_unit == "bits":  # quantizers honour it
            t["kv.protected_tokens"] += min(run.protect, n)
        t["kv.prefill_s"] += self.clock() - t0
        return logits

    @torch.no_grad()
    def decode(self, run: Run, ids: list[int] | torch.Tensor) -> torch.Tensor:
        """Feed tokens after the compressed context (compressing as the method does); all logits."""
        t0 = self.clock()
        out = self.decode_forward(run, ids)
        run.step += 1
        t = self.lm.telemetry
        t["kv.decode_s"] += self.clock() - t0
        t["kv.decode_steps"] += 1
        t["kv.policy_s"] += run.policy_s
        run.policy_s = 0.0
        t["kv.peak_cache_bytes"] = max(t["kv.peak_cache_bytes"], run.held_bytes())
        return out

    def generate_one(
        self, prompt: list[int], max_new: int, temperature: float, top_p: float, check_every: int | None = None
    ) -> list[int]:
        """Generated tokens, up to and including the end-of-sequence token. The tokens stay on the
        device: each is fed to the next step unread, and the host reads them every `check_every`
        tokens (default: 1 on the CPU, EOS_CHECK_EVERY on an accelerator) to look for the end (one
        synchronisation per block instead of one per token). Steps decoded past the end are undone
        where they show: the telemetry and the generator are put back as they were when the end was
        sampled, so the result, the telemetry and later draws equal those of a per-token check."""
        question = int(self.lm.kv_request.question_tokens)
        if not 0 <= question < len(prompt):
            raise UserError(f"kv: {question} question tokens leave no context in a {len(prompt)}-token prompt")
        run = self.start()
        cut = len(prompt) - question
        run.max_new = question + max_new
        logits = self.prefill(run, prompt[:cut], all_logits=False)[-1]
        if question:
            logits = self.decode(run, prompt[cut:])[-1]
        eos, new, check_every = self.lm.tokenizer.eos_token_id, [], check_every or self.check_every
        checked, saved = 0, []  # tokens known not to end; (telemetry, generator) after sampling each later one
        while len(new) < max_new:
            new.append(_sample(logits, temperature, top_p, self.generator))
            if len(new) == max_new:
                break
            if eos is not None:
                if check_every > 1:  # (with 1 nothing is decoded past the end)
                    saved.append((Counter(self.lm.telemetry), self.generator.get_state()))
                if len(new) - checked == check_every:
                    if bool((torch.cat(new[checked:]) == eos).any()):
                        break
                    checked, saved = len(new), []
            logits = self.decode(run, new[-1])[-1]
        tokens = torch.cat(new).tolist() if new else []
        if eos in tokens[checked:]:
            end = tokens.index(eos, checked)
            if end < len(tokens) - 1:  # decoded past the end: back to the state after sampling it
                telemetry, state = saved[end - checked]
                self.lm.telemetry.clear()
                self.lm.telemetry.update(telemetry)
                self.generator.set_state(state)
            tokens = tokens[: end + 1]
        return tokens

    def score_one(self, seq: list[int]) -> torch.Tensor:
        asked = self.lm.kv_request.decode_tokens
        n_dec = len(seq) // 2 if asked is None else int(asked)
        n_dec = max(0, min(n_dec, len(seq) - 1))
        run = self.start()
        cut = len(seq) - n_dec
        run.max_new = n_dec
        logits = [self.prefill(run, seq[:cut], all_logits=True)]
        for tok in seq[cut:]:
            logits.append(self.decode(run, [tok]))
        return torch.cat(logits)


@contextlib.contextmanager
def kv_loop(lm, method: KVMethod, driver: Driver | None = None):
    """Route the LM's batch hooks through the driver and (for this module's engine) patch the
    attention layers; both restored on exit."""
    if lm.kv_policy is not None:
        raise UserError(
            f"{method.name}: the KV cache is already managed by {lm.kv_policy.method.name}; "
            f"compose one kv cache policy (modifiers such as intactkv go after it: kivi+intactkv)"
        )
    patch = driver is None
    driver = driver or Driver(lm, method)
    method.prepare(lm)
    modules = attention_modules(lm.model) if patch else []
    reusers = reusing_layers(lm.model) if patch else []  # a CLA model's layers without K/V projections
    if patch and not modules:
        raise UserError(f"{method.name}: no attention layers with q/k/v projections found")

    @torch.no_grad()
    def generate_batch(ids, mask, max_new_tokens, temperature, top_p):
        rows = []
        for row, m in zip(ids.tolist(), mask.tolist()):
            prompt = [t for t, keep in zip(row, m) if keep]
            rows.append(driver.generate_one(prompt, max_new_tokens, temperature, top_p))
        width = max(1, max(map(len, rows)))
        pad = lm.tokenizer.pad_token_id
        return torch.tensor([r + [pad] * (width - len(r)) for r in rows])

    @torch.no_grad()
    def forward_logits(ids, mask):
        out = None
        for b, (row, m) in enumerate(zip(ids.tolist(), mask.tolist())):
            seq = [t for t, keep in zip(row, m) if keep]  # right padding (LM.loglikelihood)
            logits = driver.score_one(seq)
            if out is None:
                out = logits.new_zeros(ids.shape[0], ids.shape[1], logits.shape[-1])
            out[b, : len(seq)] = logits
        return out

    lm.kv_policy = driver
    try:
        with (
            lm.batch_hooks(generate_batch=generate_batch, forward_logits=forward_logits),
            patched_forwards(modules, lambda m: _attention_forward(driver.engine, method, m), lm.telemetry, PATCHED),
            patched_forwards(reusers, lambda m: _attention_forward(driver.engine, method, m), lm.telemetry, SHARED),
        ):
            yield driver
    finally:
        lm.kv_policy = None
