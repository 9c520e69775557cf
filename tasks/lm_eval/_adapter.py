"""An lm-eval `LM` over the harness's `harness.lm.LM`.

Every request goes through `LM.loglikelihood` / `LM.generate`, i.e. through the model the cell's
methods patched (RoPE, attention) and through the LM's batch hooks (`LM.batch_hooks`) that
KV-cache and decoding methods set. Tokenization, empty-context handling, rolling windows, stop sequences and context truncation follow lm-eval's own `hf` model
(HFLM, lm_eval/models/huggingface.py), so on a plain checkpoint both give the same numbers
(tests/test_lm_eval.py checks this against HFLM itself)."""

from __future__ import annotations

import json

from lm_eval.api.model import TemplateLM
from lm_eval.models.utils import handle_stop_sequences, normalize_gen_kwargs, postprocess_generated_text
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from harness.errors import UserError

# generation kwargs the harness LM honours; anything else would be silently ignored, so refuse it
GEN_KWARGS = {"do_sample", "temperature", "top_p", "until", "max_gen_toks"}


class HarnessAdapter(TemplateLM):
    """lm-eval requests -> harness LM calls.

    max_length: the model context in tokens: contexts are left-truncated to it (generation keeps
    room for max_gen_toks) and rolling log-likelihood uses windows of it, as HFLM does. None = the
    config's max_position_embeddings, HFLM's default; long-context runs set it to the target.
    max_gen_toks: default generation budget when a task sets none (lm-eval's 256).
    seed: base seed of sampled generations (greedy ones need none)."""

    backend = "causal"

    def __init__(self, lm, max_length: int | None = None, max_gen_toks: int = 256, seed: int = 0):
        super().__init__()
        self.lm = lm
        self.tokenizer = lm.tokenizer
        self._max_length = max_length
        self.max_gen_toks = max_gen_toks
        self.seed = seed

    # -- what lm-eval asks of a model ---------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_token_id

    @property
    def prefix_token_id(self) -> int:
        """Context of an empty-context request and of the first rolling window: BOS, else EOS (HFLM)."""
        bos = self.tokenizer.bos_token_id
        return bos if bos is not None else self.tokenizer.eos_token_id

    @property
    def max_length(self) -> int:
        return self._max_length or int(self.lm.model.config.max_position_embeddings)

    @property
    def device(self):
        return self.lm.device

    @property
    def tokenizer_name(self) -> str:
        return self.tokenizer.name_or_path.replace("/", "__")

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, left_truncate_len=None, **kw):
        """HFLM's rule: the tokenizer's own special tokens, unless the text already starts with BOS."""
        kwargs = {} if add_special_tokens is None else {"add_special_tokens": add_special_tokens}
        bos = self.tokenizer.decode(self.prefix_token_id)
        if add_special_tokens is None and bos and string.startswith(bos):
            kwargs["add_special_tokens"] = False
        ids = self.tokenizer.encode(string, **kwargs)
        return ids[-left_truncate_len:] if left_truncate_len else ids

    def tok_decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=skip_special_tokens)

    def apply_chat_template(self, chat_history: list[dict], add_generation_prompt: bool = True) -> str:
        return self.tokenizer.apply_chat_template(
            chat_history, tokenize=False, add_generation_prompt=add_generation_prompt
        )

    # -- log-likelihood -----------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kw) -> list[tuple[float, bool]]:
        """requests: ((context, continuation) strings or None, context ids, continuation ids)."""
        pairs = []
        for _, ctx, cont in requests:
            if len(cont) > self.max_length:
                raise UserError(f"a continuation of {len(cont)} tokens exceeds max_length {self.max_length}")
            # HFLM keeps the last max_length + 1 tokens of context + continuation
            keep = self.max_length + 1 - len(cont)
            pairs.append((list(ctx)[-keep:], list(cont)))
        # longest first, as HFLM sorts: fewer pad tokens per batch; results go back in order
        order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
        scored = self.lm.loglikelihood([pairs[i] for i in order])
        out: list[tuple[float, bool]] = [None] * len(pairs)  # type: ignore[list-item]
        for i, ll in zip(order, scored):
            out[i] = (ll.logprob, ll.greedy)
        for (strings, _, _), res in zip(requests, out):
            if strings is not None:
                self.cache_hook.add_partial("loglikelihood", strings, res)
        return out

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Whole-text log-likelihood: disjoint windows of max_length predicted tokens, the first
        one conditioned on the prefix token (lm-eval's get_rolling_token_windows, context_len=1)."""
        windows, owner = [], []
        for i, (string,) in enumerate(req.args for req in requests):
            for ctx, cont in map(
                make_disjoint_window,
                get_rolling_token_windows(
                    token_list=self.tok_encode(string),
                    prefix_token=self.prefix_token_id,
                    max_seq_len=self.max_length,
                    context_len=1,
                ),
            ):
                windows.append((None, ctx, cont))
                owner.append(i)
        totals = [0.0] * len(requests)
        for i, (logprob, _) in zip(owner, self._loglikelihood_tokens(windows)):
            totals[i] += logprob
        for req, total in zip(requests, totals):
            self.cache_hook.add_partial("loglikelihood_rolling", req.args, total)
        return totals

    # -- generation ---------------------------------------------------------------------------
    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """Greedy (or sampled, if the task asks) continuation of each context, cut at the first stop
        sequence. The harness LM generates max_gen_toks tokens (or to EOS) and the text is cut
        afterwards; under greedy decoding that is the text HFLM's stopping criteria produce."""
        out: list[str] = [""] * len(requests)
        groups: dict[str, list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault(json.dumps(req.args[1], sort_keys=True, default=str), []).append(i)
        eos = self.tok_decode([self.eot_token_id], skip_special_tokens=False)
        for key, idx in groups.items():
            gen_kwargs = requests[idx[0]].args[1]
            unknown = sorted(set(gen_kwargs) - GEN_KWARGS - {"max_new_tokens", "max_tokens"})
            if unknown:
                raise UserError(
                    f"generation kwargs {unknown} are not supported by the harness LM "
                    f"(supported: {', '.join(sorted(GEN_KWARGS))})"
                )
            kw = normalize_gen_kwargs(gen_kwargs, self.max_gen_toks)
            until = handle_stop_sequences(kw.pop("until", None), eos=eos)
            max_gen = kw.pop("max_gen_toks")
            temperature = float(kw.get("temperature") or 0.0) if kw.get("do_sample") else 0.0
            limit = self.max_length - max_gen
            if limit <= 0:
                raise UserError(f"max_gen_toks {max_gen} leaves no room for context in max_length {self.max_length}")
            prompts = [self.tok_encode(requests[i].args[0], left_truncate_len=limit) for i in idx]
            order = sorted(range(len(idx)), key=lambda j: -len(prompts[j]))
            new = self.lm.generate(
                [prompts[j] for j in order],
                max_gen,
                temperature=temperature,
                top_p=float(kw.get("top_p") or 1.0),
                seed=self.seed if temperature > 0 else None,
            )
            for j, tokens in zip(order, new):
                text = postprocess_generated_text(self.tok_decode(tokens), until, None)
                out[idx[j]] = text
                self.cache_hook.add_partial("generate_until", requests[idx[j]].args, text)
        return out
