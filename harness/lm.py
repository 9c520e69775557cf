"""The small LM API every LLM task uses: generation, log-likelihood of token spans, telemetry.

Methods of kind `lm` act on an LM by patching its model (RoPE, attention) or through its public
batch hooks (`LM.batch_hooks`: a whole batch's generation and/or its full-batch logits, computed
the method's own way: KV-cache policies, speculative decoding, HCM); both are restored when the
method's context exits.

Long prompts are prefilled in chunks of `prefill_chunk` tokens through the model's KV cache, as
serving engines do: activations, the attention mask and any per-layer temporaries then grow with
chunk x context, never context x context, and only the positions that are generated from or scored
get vocabulary logits (`logits_to_keep`). A batch that runs out of accelerator memory is split in
halves and retried (the LM keeps the smaller size for the rest of the run)."""

from __future__ import annotations

import contextlib
import inspect
import time
from collections import Counter
from dataclasses import dataclass

import torch

from harness import compat, journal
from harness.errors import Refused, UserError
from harness.models import LoadedModel


@dataclass
class LogLikelihood:
    logprob: float  # sum of log-probabilities of the continuation tokens
    greedy: bool  # every continuation token was the argmax
    n_tokens: int


# Tokens per prefill forward. Each chunk's attention takes a mask of chunk x context, which SDPA
# turns into floats: at 128k, 2048-token chunks cost 1 GiB of mask, 512-token ones 256 MiB (on a CPU
# a chunk of 512 is as fast per token; an accelerator wants bigger matmuls).
CPU_PREFILL_CHUNK, ACCELERATOR_PREFILL_CHUNK = 512, 2048


def default_prefill_chunk(device: str) -> int:
    return CPU_PREFILL_CHUNK if device == "cpu" else ACCELERATOR_PREFILL_CHUNK


KEEP = object()  # batch_hooks: leave this hook as it is


@dataclass(frozen=True)
class KVRequest:
    """What a task asks of a KV-cache method for the calls inside `LM.kv_request_for` (the
    kv_compression task sweeps budgets through it). Methods that manage no KV cache ignore it.

    budget: fraction of the context's tokens to keep (<= 1) or a token count (> 1); None: the
    method's own budget, 1.0 is dense (the same loop, no compression). question_tokens: how many
    final prompt tokens are the question, fed after compression (kvpress's query-agnostic protocol).
    decode_tokens: when scoring text, how many final tokens are decoded one at a time (None: the
    method's default)."""

    budget: float | None = None
    question_tokens: int = 0
    decode_tokens: int | None = None


class LM:
    def __init__(
        self, loaded: LoadedModel, batch_size: int = 8, prefill_chunk: int | None = None, chat_template: bool = False
    ):
        if chat_template and not getattr(loaded.tokenizer, "chat_template", None):
            raise UserError(
                f"--apply-chat-template: the tokenizer of {loaded.id} has no chat template "
                f"(base models and the zoo have none; drop the flag)"
            )
        self.chat_template = chat_template
        self._chats: dict[str | None, tuple[str, str]] = {}  # rendered template parts per system prompt
        self.loaded = loaded
        self.model = loaded.model
        self.tokenizer = loaded.tokenizer
        self.device = loaded.device
        self.batch_size = batch_size
        # tokens per prefill forward (0: one forward over the whole prompt)
        self.prefill_chunk = default_prefill_chunk(self.device) if prefill_chunk is None else prefill_chunk
        # While prompts are prefilled in chunks: each row's whole prompt length (a list, padding not
        # counted). Methods whose rule depends on the sequence length (dynamic NTK) read it, so that
        # chunking computes what one forward over the whole prompt would.
        self.prefill_length: list[int] | None = None
        # Public extension points (set through batch_hooks): generate_batch_hook(ids, mask,
        # max_new_tokens, temperature, top_p) -> new tokens [b, n]; forward_logits_hook(ids, mask)
        # -> logits [b, width, vocab]. None: the LM's own (transformers' generate after a chunked
        # prefill; a chunked forward keeping only the scored positions' logits).
        self.generate_batch_hook = None
        self.forward_logits_hook = None
        self._keeps_logits = "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.telemetry: Counter = Counter()
        # The cell's journal of finished generation batches while the runner keeps one (a killed run
        # resumes from it: harness.journal); None: nothing is journaled.
        self.journal: journal.Journal | None = None
        # What the task asks of a KV-cache method for the current calls (set with kv_request_for).
        self.kv_request = KVRequest()
        # The KV-cache method managing this LM's cache, while one is applied (two would conflict).
        self.kv_policy = None
        # learned absolute positions (gpt2, opt): a longer sequence is a clear error, not an IndexError
        self.position_limit = compat.position_limit(self.model)
        self._hook = self.model.register_forward_pre_hook(self._count_forward, with_kwargs=True)

    def _count_forward(self, module, args, kwargs):
        self.telemetry["forward_calls"] += 1
        if self.position_limit is not None:
            pos, ids = kwargs.get("position_ids"), kwargs.get("input_ids", args[0] if args else None)
            if pos is not None:
                top = int(pos.max()) + 1 if pos.numel() else 0
            else:
                cache = kwargs.get("past_key_values")
                top = (cache.get_seq_length() if cache is not None else 0) + (ids.shape[1] if ids is not None else 0)
            if top > self.position_limit:
                raise Refused(compat.too_long(self.model, top, self.position_limit))

    @contextlib.contextmanager
    def kv_request_for(self, request: KVRequest):
        """`lm.kv_request` is `request` for the block, and back to the previous one after."""
        saved, self.kv_request = self.kv_request, request
        try:
            yield request
        finally:
            self.kv_request = saved

    @contextlib.contextmanager
    def batch_hooks(self, generate_batch=KEEP, forward_logits=KEEP):
        """Install batch hooks for the block and restore the previous ones after; None removes a
        hook for the block (the LM's own computation runs)."""
        saved = self.generate_batch_hook, self.forward_logits_hook
        if generate_batch is not KEEP:
            self.generate_batch_hook = generate_batch
        if forward_logits is not KEEP:
            self.forward_logits_hook = forward_logits
        try:
            yield self
        finally:
            self.generate_batch_hook, self.forward_logits_hook = saved

    def forward_logits(self, ids, mask):
        """Logits of a whole (right-padded) batch at every position, through the hook if one is set."""
        return (self.forward_logits_hook or self._forward_logits)(ids, mask)

    # -- text <-> tokens ---------------------------------------------------------------------
    @property
    def original_max_length(self) -> int:
        """The context length the model was trained for (its RoPE's original maximum position)."""
        cfg = self.model.config
        rope = getattr(cfg, "rope_parameters", None) or {}
        return int(rope.get("original_max_position_embeddings") or cfg.max_position_embeddings)

    @property
    def image_token_id(self) -> int | None:
        """The token a vision-language model (transformers' LLaVA family) puts where an image's
        features go; None for a text-only model."""
        cfg = self.model.config
        token = getattr(cfg, "image_token_id", None)
        token = getattr(cfg, "image_token_index", None) if token is None else token
        return None if token is None else int(token)

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_prefix(self) -> list[int]:
        """Special tokens the tokenizer puts before a text (BOS for Llama tokenizers and the zoo v2 BPE,
        none for the zoo v1 word-level tokenizer): zoo models were trained with exactly this prefix."""
        if not hasattr(self, "_prefix"):
            self._prefix = self.tokenizer("", add_special_tokens=True)["input_ids"]
        return list(self._prefix)

    def prompt_ids(self, user: str, answer: str = "", system: str | None = None) -> list[int]:
        """A generation prompt: the task's text, then the beginning of the answer (e.g. "Answer:").
        Plain: the tokenizer's prefix, then both as one text (as the zoo models were trained).
        With the chat template: the template's user turn holding `user` and its generation prompt,
        then `answer` as the start of the assistant's turn (lm-eval's gen_prefix).
        system: a system prompt (search-and-learn's MATH CoT instruction): the template's system
        turn before the user's (a template that refuses a system role gets it at the start of the
        user's turn, a blank line between); plain, it is the text's start, a blank line before `user`."""
        if not self.chat_template:
            text = user + answer if system is None else system + "\n\n" + user + answer
            return self.prompt_prefix() + self.encode(text)
        head, tail = self._chat_parts(system)
        return self.encode(head + user + tail + answer.lstrip())  # rendered, then tokenized, as lm-eval

    def prompt_format(self) -> dict:
        """What the record keeps of how prompts were formed: the tokens before the task's text (BOS
        for Llama-style tokenizers, none for the zoo v1 tokenizer; with the chat template, its
        rendering up to the user's text) and whether the chat template wrapped them."""
        prefix = self.encode(self._chat_parts()[0]) if self.chat_template else self.prompt_prefix()
        return {"prefix_tokens": self.tokenizer.convert_ids_to_tokens(prefix), "chat_template": self.chat_template}

    def _chat_parts(self, system: str | None = None) -> tuple[str, str]:
        """The rendered template around a user turn's content (special tokens as text), after a
        system turn when `system` is given."""
        if system not in self._chats:
            from jinja2.exceptions import TemplateError

            mark = "\x00HARNESS-USER-TURN\x00"
            user = [{"role": "user", "content": mark}]
            try:
                turns = user if system is None else [{"role": "system", "content": system}] + user
                text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            except TemplateError:  # "System role not supported" (Gemma, Mistral v1): the user turn holds it
                if system is None:
                    raise
                turns = [{"role": "user", "content": system + "\n\n" + mark}]
                text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
            if text.count(mark) != 1:
                raise UserError(f"the chat template of {self.loaded.id} does not hold a user turn's text verbatim")
            self._chats[system] = tuple(text.split(mark))
        return self._chats[system]

    def decode(self, ids) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    # -- generation --------------------------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        max_new_tokens: int,
        temperature: float = 0.0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[list[int]]:
        """Continue each prompt; greedy at temperature 0. Returns the new tokens, cut at EOS."""
        out: list[list[int]] = []
        eos = self.tokenizer.eos_token_id
        for start in range(0, len(prompts), self.batch_size):
            chunk = prompts[start : start + self.batch_size]
            width = max(map(len, chunk))
            if self.position_limit is not None and width + max_new_tokens > self.position_limit:  # before any work
                raise Refused(compat.too_long(self.model, width + max_new_tokens, self.position_limit))
            pad = self.tokenizer.pad_token_id
            ids = torch.tensor([[pad] * (width - len(p)) + list(p) for p in chunk], device=self.device)
            mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk], device=self.device)
            key = None
            if self.journal is not None and journal.replayable(self, temperature, seed):
                key = journal.batch_key(
                    chunk, max_new_tokens, temperature, top_p, None if seed is None else seed + start
                )
                done = self.journal.take(key)
                if done is not None:  # finished by an earlier attempt of this cell (harness.journal)
                    out.extend(done["rows"])
                    self.telemetry.update(done["telemetry"])
                    continue
            before, t0 = Counter(self.telemetry), time.perf_counter()
            if seed is not None:
                torch.manual_seed(seed + start)
            decode = self.generate_batch_hook or self._generate_batch
            new = self._split_on_oom(
                lambda r, ids=ids, mask=mask: decode(ids[r], mask[r], max_new_tokens, temperature, top_p),
                slice(0, len(chunk)),
                pad,
            )
            for row in new.tolist():
                if eos is not None and eos in row:
                    row = row[: row.index(eos)]
                out.append(row)
            self.telemetry["prompt_tokens"] += int(mask.sum())
            self.telemetry["generated_tokens"] += sum(len(r) for r in out[-len(chunk) :])
            if key is not None:
                self.journal.add(key, out[-len(chunk) :], self.telemetry - before, time.perf_counter() - t0)
        return out

    def _split_on_oom(self, run, rows: slice, pad):
        """run(rows) on a batch's rows; on an out-of-memory error, on halves of them (recursively),
        keeping the smaller batch size for the rest of the run. Results come back in row order,
        padded with `pad` to one width (generations of the halves may differ in length)."""
        try:
            return run(rows)
        except torch.OutOfMemoryError:
            if rows.stop - rows.start == 1:
                raise
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()
        half = (rows.stop - rows.start) // 2
        self.batch_size = min(self.batch_size, half)
        self.telemetry["oom_backoffs"] += 1
        mid = rows.start + half
        parts = [self._split_on_oom(run, r, pad) for r in (slice(rows.start, mid), slice(mid, rows.stop))]
        width = max(p.shape[1] for p in parts)
        return torch.cat([torch.nn.functional.pad(p, (0, width - p.shape[1]), value=pad) for p in parts])

    @torch.no_grad()
    def prefill(self, ids, mask, length: int | None = None):
        """Run the prompt through the model in chunks of `prefill_chunk` tokens, filling a KV cache
        (returned). Position ids follow the attention mask, so left padding is handled as
        `generate` handles it. Only the last position of a chunk gets logits, and they are dropped.
        length: the whole sequence's length when the prompt is a prefix of it (default its width)."""
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for _ in self._chunked(ids, mask, length or ids.shape[1], lambda s, e: 1, cache):
            pass
        return cache

    def _chunked(self, ids, mask, length: int, keep, cache):
        """Forward ids through the KV cache a chunk at a time; yields (start, logits) per chunk,
        logits for the chunk positions keep(start, end) names (an int n: the last n)."""
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        # each row's real length in the whole sequence (left padding: its last position + 1)
        self.prefill_length = (positions[:, -1] + 1 + (length - ids.shape[1])).tolist()
        try:
            for s, e in self.chunks(ids.shape[1]):
                extra = {"logits_to_keep": keep(s, e)} if self._keeps_logits else {}
                with torch.no_grad():
                    out = self.model(
                        input_ids=ids[:, s:e],
                        attention_mask=mask[:, :e],
                        position_ids=positions[:, s:e],
                        past_key_values=cache,
                        use_cache=True,
                        **extra,
                    )
                yield s, out.logits
        finally:
            self.prefill_length = None

    def chunks(self, width: int) -> list[tuple[int, int]]:
        step = self.prefill_chunk or width
        return [(s, min(s + step, width)) for s in range(0, width, step)]

    @torch.no_grad()
    def _generate_batch(self, ids, mask, max_new_tokens: int, temperature: float, top_p: float):
        sampling = (
            dict(do_sample=True, temperature=temperature, top_p=top_p, top_k=0)
            if temperature > 0
            else dict(do_sample=False, temperature=None, top_p=None, top_k=None)
        )
        cache = None
        if self.prefill_chunk and ids.shape[1] > self.prefill_chunk:  # generate() feeds only the last token
            cache = self.prefill(ids[:, :-1], mask[:, :-1], length=ids.shape[1])
        gen = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=0,
            pad_token_id=self.tokenizer.pad_token_id,
            past_key_values=cache,
            **sampling,
        )
        return gen[:, ids.shape[1] :]

    # -- log-likelihood ----------------------------------------------------------------------
    def loglikelihood(self, requests: list[tuple[list[int], list[int]]]) -> list[LogLikelihood]:
        """log p(continuation | context) for each (context ids, continuation ids) pair."""
        if any(not ctx for ctx, _ in requests):
            raise ValueError("loglikelihood needs at least one context token per request")
        results: list[LogLikelihood] = []
        pad = self.tokenizer.pad_token_id
        for start in range(0, len(requests), self.batch_size):
            chunk = requests[start : start + self.batch_size]
            seqs = [list(c) + list(x) for c, x in chunk]
            width = max(map(len, seqs))
            ids = torch.tensor([s + [pad] * (width - len(s)) for s in seqs], device=self.device)
            mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in seqs], device=self.device)
            # target[b, p]: the token position p predicts in row b, -1 where p is not scored
            target = torch.full((len(chunk), width), -1, dtype=torch.long)
            for b, (ctx, cont) in enumerate(chunk):
                target[b, len(ctx) - 1 : len(ctx) + len(cont) - 1] = torch.tensor(cont)
            scored = self._split_on_oom(
                lambda r, ids=ids, mask=mask, target=target: self._score(ids[r], mask[r], target[r].to(self.device)),
                slice(0, len(chunk)),
                0,
            )
            for b, (_, cont) in enumerate(chunk):
                results.append(LogLikelihood(float(scored[b, 0]), bool(scored[b, 1] == len(cont)), len(cont)))
            self.telemetry["scored_tokens"] += sum(len(x) for _, x in chunk)
        return results

    def _score(self, ids, mask, target):
        """[b, 2] float64: the sum of the targets' log-probabilities and how many were the argmax,
        from the logits of the scored positions only, a chunk of positions at a time."""
        out = torch.zeros(ids.shape[0], 2, dtype=torch.float64, device=self.device)
        for positions, logits in self._scored_logits(ids, mask, (target >= 0).any(dim=0)):
            t = target[:, positions]
            logp = torch.log_softmax(logits.float(), dim=-1)
            hit = t >= 0
            lp = logp.gather(-1, t.clamp_min(0)[..., None])[..., 0]
            out[:, 0] += (lp * hit).sum(dim=1).double()
            out[:, 1] += ((logp.argmax(-1) == t) & hit).sum(dim=1).double()
        return out

    def _scored_logits(self, ids, mask, wanted):
        """(positions, logits [b, len(positions), vocab]) for the positions where `wanted` [width] is
        true. A forward_logits hook (a method that computes the whole batch its own way) is
        called once and its logits sliced; otherwise the prompt goes through the KV cache in
        chunks and the LM head runs on the wanted positions of each chunk only."""
        wanted = wanted.to(self.device)
        if self.forward_logits_hook is not None:
            positions = wanted.nonzero()[:, 0]
            yield positions, self.forward_logits_hook(ids, mask)[:, positions]
            return
        if not self._keeps_logits or not self.prefill_chunk or ids.shape[1] <= self.prefill_chunk:
            positions = wanted.nonzero()[:, 0]
            logits = self._forward_logits(ids, mask, positions if self._keeps_logits else None)
            yield positions, logits if self._keeps_logits else logits[:, positions]
            return

        def keep(s, e):
            here = wanted[s:e].nonzero()[:, 0]
            return here if len(here) else 1

        from transformers import DynamicCache

        for s, logits in self._chunked(ids, mask, ids.shape[1], keep, DynamicCache(config=self.model.config)):
            here = wanted[s : s + self.prefill_chunk].nonzero()[:, 0]
            if len(here):
                yield here + s, logits

    @torch.no_grad()
    def _forward_logits(self, ids, mask, keep=None):
        """Logits of the whole batch in one forward (no cache); keep: only these positions. Position
        ids follow the mask (each row's own, as in the chunked path), so a rule that depends on the
        sequence length sees the row's length, not the padded width."""
        extra = {} if keep is None else {"logits_to_keep": keep}
        positions = (mask.long().cumsum(-1) - 1).clamp_min(0)
        return self.model(input_ids=ids, attention_mask=mask, position_ids=positions, use_cache=False, **extra).logits

    def close(self) -> None:
        self._hook.remove()
