"""training/adamw_bf16.py: AdamW with bf16 moments (the 8gb preset's optimiser without bitsandbytes)."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from unziplora_pack.training import adamw_bf16
from unziplora_pack.training.adamw_bf16 import AdamWBF16


def _problem(seed=0, n_params=4):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(16, 8, generator=g)) for _ in range(n_params)]
    targets = [torch.randn(16, 8, generator=g) for _ in range(n_params)]
    return params, targets


def _train(opt_cls, steps, seed=0, **kw):
    params, targets = _problem(seed)
    opt = opt_cls(params, lr=1e-2, weight_decay=1e-2, **kw)
    g = torch.Generator().manual_seed(1)
    for _ in range(steps):
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params, targets))
        loss.backward()
        for p in params:  # noisy gradients, as in diffusion training
            p.grad.add_(torch.randn(p.shape, generator=g))
        opt.step()
        opt.zero_grad(set_to_none=True)
    return params, opt


def test_follows_torch_adamw():
    ours, _ = _train(AdamWBF16, 300)
    ref, _ = _train(torch.optim.AdamW, 300)
    for a, b in zip(ours, ref):
        assert (a - b).norm() / b.norm() < 0.02, ((a - b).norm() / b.norm()).item()


def test_a_parameter_that_sat_out_steps_keeps_its_own_bias_correction():
    """Like torch's AdamW: a parameter without a gradient on some steps counts only the steps it took."""
    def run(cls):
        a, b = torch.nn.Parameter(torch.ones(64)), torch.nn.Parameter(torch.ones(64))
        opt = cls([a, b], lr=1e-2, weight_decay=0.0)
        for step in range(6):
            a.grad = torch.full_like(a, 0.5)
            b.grad = torch.full_like(b, 0.5) if step >= 3 else None  # b joins at step 4
            opt.step()
        return a.detach(), b.detach()
    for ours, ref in zip(run(AdamWBF16), run(torch.optim.AdamW)):
        # within 2 % of how far the parameter moved (bf16 moments); with a shared step count b is off by 29 %
        moved = (ref - 1).abs().max()
        assert (ours - ref).abs().max() < 0.02 * moved, ((ours - ref).abs().max(), moved)


@pytest.mark.parametrize("stochastic", [True, False])
def test_second_moment_does_not_stall(monkeypatch, stochastic):
    """Constant gradient 1: exp_avg_sq must reach 1 - 0.999^t. Round-to-nearest bf16 stalls far below."""
    if not stochastic:
        monkeypatch.setattr(adamw_bf16, "round_to_bf16", lambda x, gen: x.to(torch.bfloat16))
    p = torch.nn.Parameter(torch.zeros(1024))
    opt = AdamWBF16([p], lr=0.0, weight_decay=0.0)
    steps = 800
    for _ in range(steps):
        p.grad = torch.ones_like(p)
        opt.step()
    got = opt.state[p]["exp_avg_sq"].float().mean().item()
    want = 1 - 0.999 ** steps
    if stochastic:
        assert abs(got - want) / want < 0.01, (got, want)
    else:  # the reason for stochastic rounding: this is what it prevents
        assert abs(got - want) / want > 0.1, (got, want)


def test_state_is_half_of_adamw_and_resume_is_exact():
    params, opt = _train(AdamWBF16, 10)
    state_bytes = sum(t.nbytes for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    assert state_bytes == sum(p.numel() for p in params) * 2 * 2  # two bf16 moments
    saved = opt.state_dict()
    cont, _ = _train(AdamWBF16, 20)

    # 10 steps, then a fresh optimiser from the saved state continues for 10 more: the same weights, bit for bit
    params2, _ = _train(AdamWBF16, 10)
    opt2 = AdamWBF16(params2, lr=1e-2, weight_decay=1e-2)
    opt2.load_state_dict(saved)
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in opt2.state.values())
    params_ref, targets = _problem(0)
    g = torch.Generator().manual_seed(1)
    for _ in range(10):  # replay the noise of the first 10 steps
        for p in params_ref:
            torch.randn(p.shape, generator=g)
    for _ in range(10):
        loss = sum(((p - t) ** 2).sum() for p, t in zip(params2, targets))
        loss.backward()
        for p in params2:
            p.grad.add_(torch.randn(p.shape, generator=g))
        opt2.step()
        opt2.zero_grad(set_to_none=True)
    for a, b in zip(params2, cont):
        assert torch.equal(a, b)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not func.is_view:
            self.ops[str(func.overloadpacket)] += 1
        return func(*args, **(kwargs or {}))


def test_kernels_per_step_do_not_grow_with_the_number_of_parameters():
    def ops(n):
        params = [torch.nn.Parameter(torch.randn(4096 // n)) for _ in range(n)]
        opt = AdamWBF16(params, lr=1e-3)
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()  # state created
        with _Ops() as counter:
            opt.step()
        return counter.ops
    assert ops(4) == ops(64), (ops(4), ops(64))
    assert sum(ops(64).values()) <= 30, ops(64)
