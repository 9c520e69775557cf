"""Pools sampled by the harness for math_prm_bon (solutions=generate): `samples` solutions per
problem from the cell's language model, as search-and-learn's best-of-N does (anchors-prm §1.8).
Its config's defaults are the task's: temperature 0.8, top_p 1.0, 2048 new tokens, and the Llama
MATH chain-of-thought system prompt below ("## Step k:" steps a blank line apart, a final
"\\boxed{}" answer). The pool is cached content-addressed under harness.artifacts, so scoring it
with another verifier reuses it instead of sampling again.

Sampling is seeded per problem (the cell's seed and the problem's id), so a problem's samples do
not depend on which other problems run (--limit). The draws also depend on the device's random
generator, the dtype and how many rows share a generate call, so those enter the key too."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass

from harness import artifacts
from harness.records import canonical, sha256_text
from harness.tasks import _prm_formats as formats

# search-and-learn's `system_prompt` (src/sal/config.py), the prompt its MATH-500 best-of-N runs use
SAL_SYSTEM_PROMPT = (
    "Solve the following math problem efficiently and clearly:\n\n"
    "- For simple problems (2 steps or fewer):\nProvide a concise solution with minimal explanation.\n\n"
    "- For complex problems (3 steps or more):\nUse this step-by-step format:\n\n"
    "## Step 1: [Concise description]\n[Brief explanation and calculations]\n\n"
    "## Step 2: [Concise description]\n[Brief explanation and calculations]\n\n...\n\n"
    "Regardless of the approach, always conclude with:\n\n"
    "Therefore, the final answer is: $\\boxed{answer}$. I hope it is correct.\n\n"
    "Where [answer] is just the final number or expression that solves the problem."
)
PROMPTS = {"sal": SAL_SYSTEM_PROMPT, "none": None}
SAMPLER_VERSION = "1"  # bump when the sampling or the pool file changes what a key stands for
POOL_FILE = "pool.jsonl"


@dataclass(frozen=True)
class Sampling:
    samples: int  # N per problem
    temperature: float
    top_p: float
    max_new_tokens: int
    seed: int
    system_prompt: str | None


def system_prompt(choice: str) -> str | None:
    """The task's `prompt` argument: "sal" (search-and-learn's), "none", or the system prompt's text."""
    return PROMPTS.get(choice, choice)


def problem_seed(seed: int, problem_id: str) -> int:
    return int(sha256_text(f"math_prm_bon pool/{seed}/{problem_id}")[:8], 16)


def pool_key(lm, problems: list[dict], prompts: list[list[int]], s: Sampling) -> str | None:
    """The artifact key of a pool; None when the model has no weights hash to key it by (a hub id
    whose weights are not in the local cache folder): such a pool is sampled every time."""
    sha = lm.loaded.sha256
    if sha is None:
        return None
    return artifacts.key(
        {
            "what": "math_prm_bon sampled pool",
            "version": SAMPLER_VERSION,
            "model_sha256": sha,
            "problems": sha256_text(canonical([[p["id"], p["problem"]] for p in problems])),
            "prompts": sha256_text(canonical(prompts)),  # system prompt, chat template and tokenizer, as tokens
            "sampling": asdict(s),
            "device": lm.device.split(":")[0],
            "dtype": str(lm.model.dtype),
            "rows_per_call": min(lm.batch_size, s.samples),
        }
    )


def _read(key: str) -> list[dict] | None:
    meta = artifacts.load(key)
    try:
        rows = [json.loads(line) for line in (artifacts.folder(key) / POOL_FILE).read_text().splitlines()]
    except (OSError, ValueError):
        return None
    return rows if meta is not None and len(rows) == meta.get("rows") else None


def _sample(ctx, problems, prompts, s: Sampling) -> list[dict]:
    lm, rows = ctx.lm, []
    for p, ids in ctx.iterate(list(zip(problems, prompts)), total=len(problems), desc="sampling pools"):
        new = lm.generate([ids] * s.samples, s.max_new_tokens, s.temperature, s.top_p, problem_seed(s.seed, p["id"]))
        for j, toks in enumerate(new):
            # a row as long as the budget never reached EOS: cut off, most likely without an answer
            rows.append(
                {
                    "problem_id": p["id"],
                    "sample_idx": j,
                    "text": lm.decode(toks),
                    "new_tokens": len(toks),
                    "cut": len(toks) >= s.max_new_tokens,
                }
            )
    return rows


def sampled_pools(ctx, problems: list[dict], s: Sampling, step_sep: str) -> tuple[dict[str, list[dict]], dict]:
    """(pools by problem id, what the record keeps of them): read from the cache, else sampled from
    ctx.lm and cached. Steps are split on `step_sep` and answers extracted at read time, so the
    cached texts serve any separator."""
    lm = ctx.lm
    prompts = [lm.prompt_ids(p["problem"], "\n\n", system=s.system_prompt) for p in problems]
    key = pool_key(lm, problems, prompts, s)
    rows = _read(key) if key else None
    cache = "hit" if rows is not None else ("miss" if key else "off: the model has no weights sha256 to key it by")
    if rows is None:
        rows = _sample(ctx, problems, prompts, s)
        if key:
            meta = {"rows": len(rows), "model": lm.loaded.id, "sampling": asdict(s), "version": SAMPLER_VERSION}

            def write(folder):
                (folder / POOL_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))

            artifacts.save(key, meta, write)
    pools: dict[str, list[dict]] = {}
    for r in rows:
        sol = formats.solution(r["problem_id"], formats.split_steps(r["text"], step_sep), r["text"])
        pools.setdefault(r["problem_id"], []).append(dict(sol, sample_idx=r["sample_idx"]))
    details = {
        "source": "sampled by the harness from --model",
        "artifact": key,
        "cache": cache,
        "model": lm.loaded.id,
        "model_sha256": lm.loaded.sha256,
        **asdict(s),
        "chat_template": lm.chat_template,
        "prompt_example": lm.tokenizer.decode(prompts[0]) if prompts else None,
        "step_separator": step_sep,
        "new_tokens": sum(r["new_tokens"] for r in rows),
        "cut_at_max_new_tokens": sum(r["cut"] for r in rows),
        "without_answer": sum(sol["answer"] is None for pool in pools.values() for sol in pool),
    }
    return pools, details
