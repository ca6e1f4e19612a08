"""The training step's dual layer: fused factors give the unfused reference's numbers, at a plain LoRA's op count.

Ops are aten ops that reach the backend (each one a kernel launch on a GPU), counted with a TorchDispatchMode;
views are free and not counted. Counts are exact: a change that adds per-linear work shows up here.
"""

from __future__ import annotations

from collections import Counter

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from unziplora_pack.unziplora.dual_lora import DualLoRA
from unziplora_pack.unziplora.step_factors import make_groups, prepare_groups


class Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = str(func.overloadpacket)
        if not (func.is_view or name.startswith("prim.") or name == "aten.detach"):
            self.ops[name] += 1
        return func(*args, **(kwargs or {}))

    @property
    def total(self):
        return sum(self.ops.values())


def _dual(dtype=torch.float64, style="masked"):
    g = torch.Generator().manual_seed(0)
    return _randomise(DualLoRA(32, 24, 4, content="masked", style=style, generator=g).to(dtype), g, dtype)


def _randomise(dual, g, dtype):
    """Mergers in [0, 1), about half of the columns masked, masks on."""
    with torch.no_grad():
        for _, f in dual.sides():
            f.merger.copy_(torch.rand(dual.out_features, generator=g))
            f.mask.copy_((torch.rand(dual.out_features, generator=g) < 0.5).to(dtype))
    dual.masks_on = True
    return dual


def _reference(dual, x, x_c=None, x_s=None):
    """The unfused formula: each side's (B A x) scaled per output channel by m M afterwards."""
    streams = {"content": x if x_c is None else x_c, "style": x if x_s is None else x_s}
    return sum(F.linear(F.linear(streams[n], f.down), f.up) * f.column_scale(True) for n, f in dual.sides())


def _grads(dual):
    return [p.grad.clone() for p in dual.parameters()]


def test_fused_and_per_side_equal_the_unfused_reference():
    g = torch.Generator().manual_seed(1)
    for style in ("masked", "relaxed"):
        dual = _dual(style=style)
        x, x_c, x_s = (torch.randn(2, 5, 32, dtype=torch.float64, generator=g) for _ in range(3))
        for streams in ((), (x_c, x_s)):
            dual.zero_grad(set_to_none=True)
            ref = _reference(dual, x, *streams)
            ref.square().sum().backward()
            ref_grads = _grads(dual)
            for prepared in (False, True):
                dual.zero_grad(set_to_none=True)
                dual._prepared = dual.step_factors(x.device, x.dtype, fused=not streams) if prepared else None
                out = dual(x, *streams)
                out.square().sum().backward()
                dual._prepared = None
                torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)
                for a, b in zip(_grads(dual), ref_grads):
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def _count(fn):
    with Ops() as ops:
        fn()
    return ops


def test_a_dual_linear_costs_what_a_plain_rank_2r_lora_costs_per_forward():
    dual = _dual(torch.float32)
    x = torch.randn(2, 5, 32, requires_grad=True)
    plain_a = torch.randn(8, 32, requires_grad=True)
    plain_b = torch.randn(24, 8, requires_grad=True)

    plain_fwd = _count(lambda: F.linear(F.linear(x, plain_a), plain_b))
    plain = _count(lambda: F.linear(F.linear(x, plain_a), plain_b).sum().backward())
    prepare = _count(lambda: setattr(dual, "_prepared", dual.step_factors(x.device, x.dtype, fused=True)))
    ours_fwd = _count(lambda: dual(x))
    ours = _count(lambda: dual(x).sum().backward())
    dual._prepared = None
    # every forward (and its recomputation under gradient checkpointing) is exactly a plain rank-2r LoRA's
    assert ours_fwd.ops == plain_fwd.ops, (ours_fwd.ops, plain_fwd.ops)
    # once per step and linear, not per forward: m * M and the fold into B for each side, one cat per factor
    # (the casts to the compute dtype cost nothing here: fp32 already) ...
    assert prepare.ops == Counter({"aten.mul": 4, "aten.cat": 2}), prepare.ops
    # ... and their backward: the gradients of B and of the merger through the fold, the merger's sum over r
    assert ours.ops - plain.ops == Counter({"aten.mul": 6, "aten.sum": 2, "aten.add_": 1}), ours.ops - plain.ops
    assert not plain.ops - ours.ops


def test_step_factors_serve_fp32_inputs_under_autocast():
    """On CUDA, autocast's layer norms hand the attention linears fp32 inputs: the bf16 step factors must still be
    used (the linear casts x), not formed again inside the forward."""
    dual = _dual(torch.float32)
    dual._prepared = dual.step_factors("cpu", torch.bfloat16, fused=True)
    x = torch.randn(2, 5, 32)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ops = _count(lambda: dual(x))
    dual._prepared = None
    assert "aten.cat" not in ops.ops and ops.ops["aten.mm"] == 2, ops.ops


# -- the whole LoRA's step factors, prepared per group of alike linears (unziplora/step_factors.py) -------------

def _duals(n, dtype=torch.float64, seed=0):
    """n alike dual linears (content masked, style masked / relaxed alternating) and one of another shape."""
    g = torch.Generator().manual_seed(seed)
    duals = [DualLoRA(32, 24, 4, content="masked", style=("masked", "relaxed")[i % 2], generator=g).to(dtype)
             for i in range(n)] + [DualLoRA(16, 24, 4, generator=g).to(dtype)]
    return [_randomise(d, g, dtype) for d in duals]


def _step(duals, grouped, fused, dtype=torch.float64, frozen_mergers=False, grads=True):
    """One forward + backward over all duals with the step factors prepared per dual or per group."""
    for d in duals:
        d.zero_grad(set_to_none=True)
        for _, f in d.sides():
            f.merger.requires_grad_(not frozen_mergers)
    if grouped:
        prepare_groups(make_groups((d, fused) for d in duals), "cpu", dtype)
    else:
        for d in duals:
            d._prepared = d.step_factors("cpu", dtype, fused=fused)
    g = torch.Generator().manual_seed(3)
    loss = 0
    for d in duals:
        x = torch.randn(2, 5, d.in_features, generator=g, dtype=dtype)
        loss = loss + (d(x) if fused else d(x, 0.5 * x, 2 * x)).square().sum()
    loss.backward()
    for d in duals:
        d._prepared = None
    if grads:
        return loss.detach(), [None if p.grad is None else p.grad.clone() for d in duals for p in d.parameters()]


def test_grouped_step_factors_equal_the_per_linear_ones():
    duals = _duals(4)
    for fused in (True, False):
        for frozen in (False, True):
            ref_loss, ref_grads = _step(duals, False, fused, frozen_mergers=frozen)
            loss, grads = _step(duals, True, fused, frozen_mergers=frozen)
            torch.testing.assert_close(loss, ref_loss, rtol=1e-12, atol=1e-12)
            for a, b in zip(grads, ref_grads):
                assert (a is None) == (b is None)
                if a is not None:
                    torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_grouped_step_factors_cost_per_group_not_per_linear():
    """The preparation and its backward cost the same kernels for 2 or 12 alike linears."""
    def extra_ops(n):
        duals = _duals(n, torch.float32)
        grouped = _count(lambda: _step(duals, True, True, torch.float32, grads=False))
        for d in duals:  # what the forwards and their backward cost with factors made outside the count
            d._prepared = {"fused": tuple(t.detach().requires_grad_() for t in
                                          d.step_factors("cpu", torch.float32, fused=True)["fused"])}
        g = torch.Generator().manual_seed(3)
        with Ops() as ops:
            loss = sum(d(torch.randn(2, 5, d.in_features, generator=g)).square().sum() for d in duals)
            loss.backward()
        plain = ops.ops
        return grouped.ops - plain
    assert extra_ops(2) == extra_ops(12), (extra_ops(2), extra_ops(12))
    # three groups here (content/style masked, style relaxed, the other shape): under 30 kernels each, forward
    # and backward, where one linear alone costs ~15 prepared per linear
    assert sum(extra_ops(12).values()) <= 3 * 30, extra_ops(12)
