"""ALiBi: slopes and biases against the paper's formulas; RoPE models are refused."""
import math

import pytest
import torch

from harness.errors import UserError
from harness.interfaces import MethodContext
from harness.methods.rope._attention import AttentionInputs
from harness.methods.rope.alibi import ALiBi, alibi_attend, alibi_slopes


def test_slopes_follow_the_paper():
    torch.testing.assert_close(alibi_slopes(8), torch.tensor([1 / 2 ** k for k in range(1, 9)]))
    # 12 heads: the 8 slopes of H=8, then slopes 1, 3, 5, 7 (0-based 0, 2, 4, 6) of H=16
    expected = [2 ** (-k) for k in range(1, 9)] + [2 ** (-0.5 * k) for k in (1, 3, 5, 7)]
    torch.testing.assert_close(alibi_slopes(12), torch.tensor(expected))


def test_attend_equals_slow_loop():
    torch.manual_seed(1)
    H, L, d = 4, 9, 8
    q, k, v = (torch.randn(1, H, L, d, dtype=torch.float64) for _ in range(3))
    pos = torch.arange(L)[None]
    a = AttentionInputs(q, k, v, pos, pos, torch.ones(L, L, dtype=torch.bool).tril()[None, None],
                        1 / math.sqrt(d), rope=None)
    got = alibi_attend(a)
    for h in range(H):
        m = 2 ** (-8 * (h + 1) / H)
        for i in range(L):
            logits = torch.stack([q[0, h, i] @ k[0, h, j] / math.sqrt(d) - m * (i - j) for j in range(i + 1)])
            expected = torch.softmax(logits, 0) @ v[0, h, : i + 1]
            torch.testing.assert_close(got[0, h, i], expected, rtol=1e-5, atol=1e-6)


def test_refuses_rope_models(tiny_lm):
    with pytest.raises(UserError, match="pretrained with ALiBi"):
        ALiBi().apply(tiny_lm, MethodContext())
