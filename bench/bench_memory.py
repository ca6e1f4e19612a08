#!/usr/bin/env python
"""Full-size SDXL training memory, FLOPs and ops per step without a GPU (a benchmark, never a test).

    nice -n 10 .venv/bin/python bench/bench_memory.py                  # full SDXL UNet, 1024 + 768 px, rank 64
    .venv/bin/python bench/bench_memory.py --tiny                      # the tests' tiny UNet, for a quick look
    .venv/bin/python bench/bench_memory.py --res 1024 --rank 64 --rows ours,plain,dense

The UNet (ComfyUI's SDXL config, 2.57 B parameters, bf16) is built under FakeTensorMode: fake CPU tensors carry
shapes and dtypes but no data, so one real training step of the pack's own code (Trainer.step: step factors,
forward under bf16 autocast, backward, schedule, clip, AdamW) runs in minutes and allocates almost nothing.
Rows, each one step at the same size:
    ours    Trainer.step of UnZipLoRA (paper mode, masks on, L_orth on: the steps between selections)
    plain   one ordinary LoRA of rank 2r on the same 560 linears (the same FLOPs as our two rank-r LoRAs)
    dense   the authors' way: per linear and LoRA, dense (m M) . (B A) formed every forward, then x ΔW^T
Memory (GiB) = parameters + gradients + optimiser state + tensors saved for backward (saved_tensors_hooks, one
count per storage, parameters not counted twice) [+ the largest recomputed layer]. Saved tensors are attributed
to the UNet layer that saved them, so one pass without checkpointing gives every checkpointing variant:
    none       everything saved
    full       the inputs of every block layer + what is saved outside them + the largest layer (recomputed in
               backward, its saved tensors alive until its backward ends)
    selective  only the layers of the 10-deep blocks checkpointed (input 7-8, middle, output 0-2)
Not counted: activation gradients in flight during backward (one or two layer outputs), the CUDA allocator's
fragmentation and workspace, ComfyUI/CUDA context (~0.5 GiB). ops: aten ops that reach the backend per step
(each one a kernel launch on a GPU; views and metadata ops counted apart), from a TorchDispatchMode.
FLOPs: torch's FlopCounterMode, with the CPU flash-attention op given SDPA's formula.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

from bench_apply import full_sdxl_config, setup  # noqa: E402

GIB = 2**30
DEEP_BLOCKS = ("input_blocks.7", "input_blocks.8", "middle_block", "output_blocks.0", "output_blocks.1",
               "output_blocks.2")


def _register_cpu_flash_flops():
    import torch
    from torch.utils import flop_counter as fc

    aten = torch.ops.aten
    if aten._scaled_dot_product_flash_attention_for_cpu in fc.flop_registry:
        return

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu)
    def _fwd(query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_flop_count(query, key, value)

    @fc.register_flop_formula(aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _bwd(grad_out, query, key, value, *args, out_shape=None, **kwargs):
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def op_counter():
    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        """aten ops at the backend: `kernels` excludes views and pure metadata ops (no launch on a GPU)."""

        def __init__(self):
            super().__init__()
            self.kernels = 0
            self.views = 0
            self.host_reads = 0
            self.by_op: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = str(func.overloadpacket)
            if name == "aten._local_scalar_dense":
                self.host_reads += 1  # .item() of a CPU scalar (foreach AdamW's step count): no kernel
            elif not name.startswith("prim."):
                if func.is_view or name in ("aten.detach", "aten.lift_fresh", "aten.alias"):
                    self.views += 1
                else:
                    self.kernels += 1
                    self.by_op[name] += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


class SavedTensors:
    """saved_tensors_hooks accounting: bytes per storage, attributed to the block layer running at the time."""

    def __init__(self, unet, exclude, persistent=None):
        from unziplora_pack.unziplora.checkpointing import _block_layers

        self.exclude = {self._key(t) for t in exclude}
        # tensors made once per step before the forward (our step factors): alive all step, never recomputed
        self.persistent_fn = persistent
        self.persistent = None
        self.layer = None
        self.saved: dict = {}  # storage key -> (bytes, layer)
        self.inputs: dict = {}  # storage key -> (bytes, layer): tensor inputs of each block layer
        self.layers = {}
        names = {id(m): n for n, m in unet.named_modules()}
        self.handles = []
        for layer in _block_layers(unet):
            name = names[id(layer)]
            self.layers[name] = layer
            self.handles.append(layer.register_forward_pre_hook(self._enter(name), with_kwargs=True))
            self.handles.append(layer.register_forward_hook(self._leave, with_kwargs=True))

    @staticmethod
    def _key(t):
        return t.untyped_storage()._cdata

    def _enter(self, name):
        def hook(module, args, kwargs):
            if self.persistent is None:
                self.persistent = {self._key(t) for t in (self.persistent_fn() if self.persistent_fn else [])}
            self.layer = name
            for a in list(args) + list(kwargs.values()):
                if hasattr(a, "untyped_storage") and self._key(a) not in self.exclude:
                    self.inputs.setdefault(self._key(a), (a.untyped_storage().nbytes(), name))
        return hook

    def _leave(self, module, args, kwargs, output):
        self.layer = None

    def pack(self, t):
        key = self._key(t)
        if key not in self.exclude and key not in self.saved:
            layer = None if self.persistent and key in self.persistent else self.layer
            self.saved[key] = (t.untyped_storage().nbytes(), layer)
        return t

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def close(self):
        for h in self.handles:
            h.remove()

    def peaks(self) -> dict:
        """Bytes held for backward under each checkpointing variant."""
        per_layer = Counter()
        outside = 0
        for nbytes, layer in self.saved.values():
            if layer is None:
                outside += nbytes
            else:
                per_layer[layer] += nbytes
        out = {"none": outside + sum(per_layer.values())}
        for variant, ckpt in (("full", set(self.layers)),
                              ("selective", {n for n in self.layers if n.startswith(DEEP_BLOCKS)})):
            kept = outside + sum(b for n, b in per_layer.items() if n not in ckpt)
            boundary = sum(b for k, (b, n) in self.inputs.items() if n in ckpt and k not in self.saved)
            # inputs a non-checkpointed layer saved anyway are already in `kept`
            boundary += sum(b for k, (b, n) in self.inputs.items() if n in ckpt and k in self.saved
                            and self.saved[k][1] in ckpt)
            largest = max((b for n, b in per_layer.items() if n in ckpt), default=0)
            out[variant] = kept + boundary + largest
        return out


def fake_unet(fake_mode, tiny: bool):
    import comfy.supported_models
    import torch

    from tiny_models import TINY_UNET_CONFIG
    from unziplora_pack.training.model_copy import as_plain_torch_layers

    with fake_mode:
        config = comfy.supported_models.SDXL(dict(TINY_UNET_CONFIG) if tiny else full_sdxl_config())
        config.set_inference_dtype(torch.bfloat16, None)
        model = config.get_model({})
        unet = model.diffusion_model
        as_plain_torch_layers(unet)
        unet.requires_grad_(False)
    return unet


def _inputs(resolution: int):
    import torch

    from unziplora_pack.training.data import LatentPosteriors, PromptStreams

    g = torch.Generator().manual_seed(0)
    x, x_c, x_s = (torch.randn(1, 77, 2048, generator=g) for _ in range(3))
    lat = resolution // 8
    post = LatentPosteriors(torch.randn(1, 4, lat, lat, generator=g), torch.full((1, 4, lat, lat), 0.05))
    return PromptStreams(x, x_c, x_s, torch.randn(1, 1280, generator=g)), post, torch.randn(1, 2816, generator=g)


class _HookLoRA:
    """The comparison rows' LoRAs: forward hooks adding a delta to every target linear's output."""

    def __init__(self, unet, targets, make_delta):
        self.handles = [unet.get_submodule(t.path).register_forward_hook(make_delta(t)) for t in targets]

    def close(self):
        for h in self.handles:
            h.remove()


def _comparison_step(row, unet, rank, resolution, fake_mode):
    """(step function, trainable params) of the plain / dense rows; the step mirrors Trainer.step."""
    import torch
    import torch.nn.functional as F

    from unziplora_pack.unziplora.dual_lora import LoRAFactors
    from unziplora_pack.unziplora.targets import find_targets

    targets = find_targets(unet)
    with fake_mode:
        if row == "plain":
            mods = {t.path: LoRAFactors(t.in_features, t.out_features, 2 * rank) for t in targets}
        else:
            mods = {t.path: (LoRAFactors(t.in_features, t.out_features, rank),
                             LoRAFactors(t.in_features, t.out_features, rank)) for t in targets}
        for m in mods.values():
            for f in (m if isinstance(m, tuple) else (m,)):
                f.mask.fill_(1.0)
                if row == "plain":
                    f.merger.requires_grad_(False)

    def make_delta(t):
        m = mods[t.path]

        def hook(module, args, output):
            x = args[0]
            if row == "plain":
                return output + F.linear(F.linear(x, m.down), m.up)
            dense = sum(f.column_scale(True)[:, None] * (f.up @ f.down) for f in m)
            return output + F.linear(x, dense.to(x.dtype))
        return hook

    hooks = _HookLoRA(unet, targets, make_delta)
    params = [p for m in mods.values() for f in (m if isinstance(m, tuple) else (m,)) for p in f.parameters()
              if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=5e-5, weight_decay=1e-4, foreach=True)
    streams, post, adm = _inputs(resolution)
    lat = resolution // 8

    def step():
        x0 = post.sample_crop(lat, torch.Generator().manual_seed(1))
        noise = torch.randn(x0.shape)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            eps = unet(x0.to(torch.bfloat16), torch.full((1,), 500.0), context=streams.x.to(torch.bfloat16),
                       y=adm.to(torch.bfloat16),
                       transformer_options={"optimized_attention_override": _sdpa})
        loss = F.mse_loss(eps.float(), noise)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0, foreach=True)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    return step, params, opt, hooks.close


def _sdpa(func, *args, **kwargs):
    import comfy.ldm.modules.attention as attention

    return attention.attention_pytorch(*args, **kwargs)


def _ours_step(unet, rank, resolution, fake_mode, mode="unziplora"):
    import torch

    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.loop import Trainer, TrainInputs

    streams, post, adm = _inputs(resolution)
    cfg = TrainConfig(mode=mode, rank=rank, resolution=resolution, checkpoint_every=0, precision="bf16",
                      gradient_checkpointing="off")
    trainer = Trainer(TrainInputs(unet=unet, streams=streams, posteriors=post, adm=adm), cfg, device="cpu")
    trainer.dtype = torch.bfloat16  # pick_precision keeps fp32 on a CPU; the bench simulates a bf16 GPU
    with fake_mode:
        unet, lora, optimizer, schedule, scaler, gen, streams = trainer._setup()
        # between selections, the common step: masks on, mergers trained on the overlap, L_orth on
        # (the selection itself is skipped: its top-K indexing has data-dependent shapes, and it runs 3 times a
        # run on one layer at a time; bench_train.py counts its ops)
        schedule.before_optimizer_step(0)
        schedule._set_masks_on(True)
        schedule._set_frozen(False)
        schedule._orth = True
    params = [p for g in optimizer.param_groups for p in g["params"]]

    def step():
        return trainer.step(2, unet, lora, optimizer, schedule, scaler, gen, streams, params)

    def prepared():
        return [t for _, _, d in lora.items() for pair in (d._prepared or {}).values() for t in pair]

    step.persistent = prepared
    return step, params, optimizer, lora.detach


def measure(row: str, rank: int, resolution: int, tiny: bool) -> dict:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    _register_cpu_flash_flops()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    t0 = time.perf_counter()
    unet = fake_unet(fake_mode, tiny)
    build = _ours_step if row == "ours" else (lambda *a: _comparison_step(row, *a))
    step, params, opt, close = build(unet, rank, resolution, fake_mode)
    step()  # the optimiser's state exists from here on; the measured step is the second
    base = list(unet.parameters())
    acct = SavedTensors(unet, base + params, getattr(step, "persistent", None))
    counter = op_counter()
    flops = FlopCounterMode(display=False)
    with flops, counter, acct.hooks():
        step()
    acct.close()
    close()
    nbytes = sum(p.numel() * p.element_size() for p in base)
    trainable = sum(p.numel() * p.element_size() for p in params)
    opt_state = sum(v.numel() * v.element_size() for s in opt.state.values() for v in s.values()
                    if torch.is_tensor(v) and v.ndim > 0)
    static = nbytes + trainable * 2 + opt_state  # weights + LoRA + their gradients + AdamW moments
    peaks = acct.peaks()
    return dict(row=row, rank=rank, res=resolution, params_gib=nbytes / GIB, lora_m=sum(p.numel() for p in params) / 1e6,
                static_gib=static / GIB, opt_gib=opt_state / GIB, adam8_saving_gib=opt_state * 0.75 / GIB,
                **{f"mem_{k}": (static + v) / GIB for k, v in peaks.items()},
                saved_gib=peaks["none"] / GIB, kernels=counter.kernels, views=counter.views,
                tflop=flops.get_total_flops() / 1e12, seconds=time.perf_counter() - t0,
                top_ops=counter.by_op.most_common(8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="the tests' tiny UNet (seconds, not minutes)")
    ap.add_argument("--res", type=int, nargs="+", default=None)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rows", default="ours,plain,dense")
    a = ap.parse_args()
    setup(cpu=True)
    resolutions = a.res or ([128] if a.tiny else [1024, 768])
    rows = []
    for res in resolutions:
        for row in a.rows.split(","):
            r = measure(row, a.rank, res, a.tiny)
            rows.append(r)
            print(f"# {row} {res}px: {r['seconds']:.0f} s; top ops {r['top_ops']}", flush=True)
    print(f"{'row':<7}{'px':>5}{'rank':>5}{'LoRA M':>8}{'static':>8}{'saved':>7}{'none':>7}{'full':>7}{'select':>8}"
          f"{'kernels':>9}{'views':>8}{'TFLOP':>7}   (GiB; 'none/full/select' = peak by checkpointing)")
    for r in rows:
        print(f"{r['row']:<7}{r['res']:>5}{r['rank']:>5}{r['lora_m']:>8.1f}{r['static_gib']:>8.2f}{r['saved_gib']:>7.2f}"
              f"{r['mem_none']:>7.2f}{r['mem_full']:>7.2f}{r['mem_selective']:>8.2f}{r['kernels']:>9}{r['views']:>8}"
              f"{r['tflop']:>7.2f}")
    print("AdamW moments (fp32) per row: " + ", ".join(f"{r['row']} {r['opt_gib']:.2f}" for r in rows)
          + " GiB; an 8-bit AdamW would save 3/4 of that")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
