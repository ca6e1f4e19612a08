"""AdamW with its two moments stored in bfloat16: half of torch AdamW's optimiser state, no extra package.

The 8gb preset's optimiser when bitsandbytes (8-bit AdamW) is not installed: on SDXL at rank 64 the fp32 moments
are 1.4 GiB of an 8.3 GiB step; stored in bf16 they are 0.7 GiB.

The arithmetic is torch.optim.AdamW's (decoupled weight decay, bias correction, eps outside the square root) in
fp32; only the stored moments are bf16. Stored with round-to-nearest, the second moment would stall: with
beta2 = 0.999 each step adds 0.1 % of its value, below half a bf16 step (0.2-0.4 %), so the update would be
rounded away whenever the gradient is steady. Stochastic rounding (round up with probability equal to the
fraction cut off) keeps every update right on average. Its random bits come from the optimiser's own generator,
whose state is in state_dict(), so a resumed run continues exactly.

Kernels: parameters are processed in chunks of up to `chunk_numel` elements (whole parameters, one param group),
each a fixed ~20 launches whatever its number of tensors (concatenated moments, foreach updates), so the cost
scales with the state's size, not with the 1,100 parameters of an SDXL LoRA.
"""

from __future__ import annotations

import torch

_ROUND_MASK = -65536  # int32 0xFFFF0000: the bits a bfloat16 keeps of a float32


def round_to_bf16(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """float32 -> bfloat16, rounded stochastically (exact: the low 16 bits are cleared before the cast)."""
    noise = torch.randint(0, 1 << 16, x.shape, dtype=torch.int32, device=x.device, generator=generator)
    return ((x.view(torch.int32) + noise) & _ROUND_MASK).view(torch.float32).to(torch.bfloat16)


class AdamWBF16(torch.optim.Optimizer):
    def __init__(self, params, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8, weight_decay: float = 1e-2,
                 chunk_numel: int = 1 << 23, seed: int = 0):
        if lr < 0 or eps < 0 or weight_decay < 0 or not all(0 <= b < 1 for b in betas):
            raise ValueError(f"AdamWBF16: invalid lr={lr}, betas={betas}, eps={eps} or weight_decay={weight_decay}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))
        self.chunk_numel = int(chunk_numel)
        self._seed = seed
        self._generators: dict = {}

    def _generator(self, device: torch.device) -> torch.Generator:
        key = str(device)
        if key not in self._generators:
            self._generators[key] = torch.Generator(device).manual_seed(self._seed)
        return self._generators[key]

    def _chunks(self, params):
        chunk, size = [], 0
        for p in params:
            if chunk and (size + p.numel() > self.chunk_numel or p.device != chunk[0].device):
                yield chunk
                chunk, size = [], 0
            chunk.append(p)
            size += p.numel()
        if chunk:
            yield chunk

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if not params:
                continue
            b1, b2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in params:
                if p.grad.is_sparse:
                    raise RuntimeError("AdamWBF16 does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, dtype=torch.bfloat16, memory_format=torch.contiguous_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, dtype=torch.bfloat16,
                                                           memory_format=torch.contiguous_format)
                state["step"] += 1
            # bias correction is per parameter: one that sat out steps (no gradient) is updated apart
            by_step: dict[int, list] = {}
            for p in params:
                by_step.setdefault(self.state[p]["step"], []).append(p)
            for same_step in by_step.values():
                for chunk in self._chunks(same_step):
                    self._update(chunk, lr, b1, b2, eps, wd)
        return loss

    def _update(self, params, lr, b1, b2, eps, wd):
        states = [self.state[p] for p in params]
        t = states[0]["step"]  # equal within a chunk (step() groups by it)
        sizes = [p.numel() for p in params]
        grad = torch.cat([p.grad.reshape(-1) for p in params]).float()
        m = torch.cat([s["exp_avg"].reshape(-1) for s in states]).float().lerp_(grad, 1 - b1)
        v = torch.cat([s["exp_avg_sq"].reshape(-1) for s in states]).float().mul_(b2).addcmul_(grad, grad, value=1 - b2)
        gen = self._generator(grad.device)
        torch._foreach_copy_([s["exp_avg"].view(-1) for s in states], list(round_to_bf16(m, gen).split(sizes)))
        torch._foreach_copy_([s["exp_avg_sq"].view(-1) for s in states], list(round_to_bf16(v, gen).split(sizes)))
        bc1, bc2 = 1 - b1 ** t, 1 - b2 ** t
        # the update uses the fp32 moments of this step (before their rounding), as fp32 AdamW would
        update = m.div_(v.sqrt_().div_(bc2 ** 0.5).add_(eps))
        if wd:
            torch._foreach_mul_(params, 1 - lr * wd)
        torch._foreach_add_(params, [u.view_as(p) for u, p in zip(update.split(sizes), params)], alpha=-lr / bc1)

    def state_dict(self):
        out = super().state_dict()
        out["rounding_rng"] = {k: g.get_state() for k, g in self._generators.items()}
        return out

    def load_state_dict(self, state_dict):
        state_dict = dict(state_dict)
        rng = state_dict.pop("rounding_rng", {})
        super().load_state_dict(state_dict)
        for p_state in self.state.values():  # the base class casts state to the parameter's dtype: keep bf16
            for key in ("exp_avg", "exp_avg_sq"):
                if key in p_state:
                    p_state[key] = p_state[key].to(torch.bfloat16)
        for key, value in rng.items():
            self._generator(torch.device(key)).set_state(value)
