"""One training step's LoRA factors for all linears at once: a few kernels per group of alike linears.

Per linear and step the forward needs A (cast to the compute dtype) and (m M)[:, None] * B (the column scale
folded into B), and, where content and style read the same input, both concatenated into one rank-2r LoRA
(dual_lora.DualLoRA.step_factors). Done linear by linear that is ~15 small kernels each, forward and backward:
on SDXL's 560 linears ~8,000 launches a step, more than a plain LoRA's whole step spends outside its matmuls.

Here the linears are grouped by everything that shapes the work (in/out features, sides present and their mask
mode, fused or per side); each group's factors are stacked and prepared by one autograd Function, so the cost
is per group (about a dozen on SDXL) and no longer per linear. Each linear then reads its slice (a view, no
kernel) and the backward stacks the slices' gradients once per group.

The parameters stay what they were, one A, B and merger per side and linear (checkpoints, files, the
optimiser and the column selection are unchanged); their gradients arrive as views of one buffer per group.
The Function saves references to the parameters and the small per-column scales only, so memory is what the
per-linear preparation held: the prepared factors in the compute dtype.
"""

from __future__ import annotations

import torch


class _GroupFactors(torch.autograd.Function):
    """inputs: (fused, dtype, device, sides meta, *tensors); outputs: fused (A [G, kr, in], B' [G, out, kr]) or
    per side (A_0, B'_0, A_1, B'_1, ...), with B' = (m M)[:, None] * B, all in `dtype` on `device`."""

    @staticmethod
    def forward(ctx, fused, dtype, device, layout, *tensors):
        # layout: per side (G, has_mask); tensors: per side downs (G), ups (G), mergers (G), masks (G or 0)
        sides, i = [], 0
        for g, has_mask in layout:
            downs, ups, mergers = tensors[i:i + g], tensors[i + g:i + 2 * g], tensors[i + 2 * g:i + 3 * g]
            i += 3 * g
            masks = tensors[i:i + g] if has_mask else None
            i += g if has_mask else 0
            sides.append((downs, ups, mergers, masks))
        downs_out, ups_out, scales, eff_masks = [], [], [], []
        with torch.no_grad():
            for downs, ups, mergers, masks in sides:
                mask = torch.stack(masks) if masks is not None else None
                scale = torch.stack(mergers)
                if mask is not None:
                    scale = scale * mask
                downs_out.append(torch.stack(downs))
                ups_out.append(torch.stack(ups) * scale[..., None])
                scales.append(scale)
                eff_masks.append(mask)
            if fused and len(sides) > 1:
                outs = (torch.cat(downs_out, 1), torch.cat(ups_out, 2))
            else:
                outs = tuple(t for pair in zip(downs_out, ups_out) for t in pair)
            outs = tuple(t.to(device=device, dtype=dtype) for t in outs)
        ctx.fused, ctx.layout, ctx.param_dtype = fused and len(sides) > 1, layout, tensors[0].dtype
        ctx.ranks = [t.shape[1] for t in downs_out]
        ctx.sides_ups = [ups for _, ups, _, _ in sides]
        ctx.save_for_backward(*scales, *(m for m in eff_masks if m is not None))
        ctx.has_mask = [m is not None for m in eff_masks]
        return outs

    @staticmethod
    def backward(ctx, *grads):
        saved = ctx.saved_tensors
        k = len(ctx.layout)
        scales, masks_iter = saved[:k], iter(saved[k:])
        eff_masks = [next(masks_iter) if has else None for has in ctx.has_mask]
        if ctx.fused:
            g_down, g_up = grads
            offs = [sum(ctx.ranks[:j]) for j in range(k)]
            g_downs = [None if g_down is None else g_down[:, o:o + r] for o, r in zip(offs, ctx.ranks)]
            g_ups = [None if g_up is None else g_up[:, :, o:o + r] for o, r in zip(offs, ctx.ranks)]
        else:
            g_downs, g_ups = list(grads[0::2]), list(grads[1::2])
        out = [None, None, None, None]  # fused, dtype, device, layout
        i = 4
        for j, (g, has_mask) in enumerate(ctx.layout):
            need_down = any(ctx.needs_input_grad[i:i + g])
            need_up = any(ctx.needs_input_grad[i + g:i + 2 * g])
            need_merger = any(ctx.needs_input_grad[i + 2 * g:i + 3 * g])
            i += 3 * g + (g if has_mask else 0)
            side_grads: list = [None] * (3 * g + (g if has_mask else 0))
            if need_down and g_downs[j] is not None:
                gd = g_downs[j].to(ctx.param_dtype)
                side_grads[:g] = gd.unbind(0)
            if g_ups[j] is not None and (need_up or need_merger):
                gu = g_ups[j]
                if need_up:
                    gb = torch.empty(gu.shape, dtype=ctx.param_dtype, device=gu.device)
                    torch.mul(gu, scales[j][..., None], out=gb)
                    side_grads[g:2 * g] = gb.unbind(0)
                if need_merger:
                    ups = torch.stack(ctx.sides_ups[j]).to(gu.device)
                    gm = (gu * ups).sum(-1)
                    if eff_masks[j] is not None:
                        gm = gm * eff_masks[j]
                    side_grads[2 * g:3 * g] = gm.to(ctx.param_dtype).unbind(0)
            out += side_grads
        return tuple(out)


def group_key(dual, fused: bool) -> tuple:
    """What must be equal for linears to share one preparation."""
    return (fused and len(dual.sides()) == 2, dual.in_features, dual.out_features, dual.masks_on,
            tuple((name, f.mask_mode, f.rank, f.down.dtype, f.down.device) for name, f in dual.sides()))


def prepare_groups(groups: list[list], device, dtype) -> None:
    """Set `_prepared` on every DualLoRA of every group: groups are lists of (dual, fused) with equal group_key."""
    for members in groups:
        duals = [d for d, _ in members]
        fused = members[0][1] and len(duals[0].sides()) == 2
        names = [name for name, _ in duals[0].sides()]
        tensors, layout = [], []
        for name in names:
            side = [getattr(d, name) for d in duals]
            masked = duals[0].masks_on and side[0].mask_mode == "masked"
            tensors += [f.down for f in side] + [f.up for f in side] + [f.merger for f in side]
            if masked:
                tensors += [f.mask for f in side]
            layout.append((len(duals), masked))
        outs = _GroupFactors.apply(fused, dtype, torch.device(device), tuple(layout), *tensors)
        per_dual = [t.unbind(0) for t in outs]
        for g, dual in enumerate(duals):
            if fused:
                dual._prepared = {"fused": (per_dual[0][g], per_dual[1][g])}
            else:
                dual._prepared = {name: (per_dual[2 * j][g], per_dual[2 * j + 1][g]) for j, name in enumerate(names)}


def make_groups(items) -> list[list]:
    """items: (dual, fused) pairs -> groups of equal group_key, in first-seen order."""
    groups: dict[tuple, list] = {}
    for dual, fused in items:
        groups.setdefault(group_key(dual, fused), []).append((dual, fused))
    return list(groups.values())
