"""The sampling losslessness test of spec_acceptance: under a lossless speculative method each
generated token is drawn from the target's own distribution, checked with a G-test of the sampled
token counts against exact target forwards (the statistics: `g_test`, `chi2_sf`)."""

from __future__ import annotations

import math
from collections import Counter

import torch

from harness.synthetic import sample_seed


def chi2_sf(stat: float, df: int) -> float:
    """P(χ²_df ≥ stat), the regularised upper incomplete gamma Q(df/2, stat/2)."""
    if df <= 0:
        return 1.0
    return float(
        torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64), torch.tensor(stat / 2, dtype=torch.float64))
    )


def g_test(counts: Counter, p: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int]:
    """G statistic and degrees of freedom of observed token counts against the distribution p.
    Tokens whose expected count is below min_expected are pooled into one bin (the usual rule)."""
    n = sum(counts.values())
    expected = p.double() * n
    big = (expected >= min_expected).nonzero().flatten().tolist()
    obs = [counts.get(t, 0) for t in big]
    exp = [float(expected[t]) for t in big]
    rest_obs, rest_exp = n - sum(obs), n - sum(exp)
    if rest_exp > 1e-9 or rest_obs:
        obs.append(rest_obs)
        exp.append(max(rest_exp, 1e-12))
    g = 2 * sum(o * math.log(o / e) for o, e in zip(obs, exp) if o > 0)
    return g, len(obs) - 1


def distribution_test(ctx, prompts, seeds: int, tokens: int, alpha: float, temperature: float = 1.0) -> dict:
    """Sample `tokens` tokens `seeds` times after each prompt (spec_acceptance: its first
    `sampling_prefixes`) at the temperature (1 in the task); `alpha` is recorded with the result.
    Tokens 2.. went through the method's verification; under
    equality each is drawn from the target's p(· | its own sampled context), so per prefix and
    position the token counts have expectation Σ_i p(· | context_i) (one exact target forward
    per distinct context). A G-test per (prefix, position) against that expectation (bins of
    expected count ≥ 5, the rest pooled), the statistics and degrees of freedom summed into one
    test; the count vector's variance is at most the multinomial one, so the test is conservative."""
    lm, tested = ctx.lm, []
    g_total, df_total = 0.0, 0
    saved = lm.telemetry
    for pid, ids in prompts:
        outs = lm.generate(
            [ids] * seeds, tokens, temperature=temperature, seed=sample_seed(ctx.seed, "dist", pid) % 2**31
        )
        lm.telemetry = Counter()  # the reference forwards are not the method's
        try:
            for k in range(1, tokens):
                rows = [o for o in outs if len(o) > k]
                contexts = sorted({tuple(o[:k]) for o in rows})
                dist = {}
                for start in range(0, len(contexts), 64):
                    chunk = contexts[start : start + 64]
                    batch = torch.tensor([list(ids) + list(c) for c in chunk], device=lm.device)
                    with torch.no_grad():
                        logits = lm.model(input_ids=batch).logits[:, -1].float()
                    for c, row in zip(chunk, torch.softmax(logits / temperature, -1).cpu()):
                        dist[c] = row
                if len(rows) < 20:
                    continue
                expected = sum(dist[tuple(o[:k])].double() for o in rows) / len(rows)
                g, df = g_test(Counter(o[k] for o in rows), expected)
                if df:
                    g_total, df_total = g_total + g, df_total + df
                    tested.append(
                        {
                            "prompt_id": pid,
                            "position": k + 1,
                            "n": len(rows),
                            "contexts": len(contexts),
                            "g": round(g, 3),
                            "df": df,
                        }
                    )
        finally:
            lm.telemetry = saved
    return {
        "g": g_total,
        "df": df_total,
        "p_value": chi2_sf(g_total, df_total),
        "groups": tested,
        "alpha": alpha,
        "seeds": seeds,
        "tokens": tokens,
    }
