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


def op_counter(tracker=None):
    from torch.utils._python_dispatch import TorchDispatchMode

    class _OpCounter(TorchDispatchMode):
        """aten ops at the backend: `kernels` excludes views and pure metadata ops (no launch on a GPU).
        With a ModuleTracker, kernels run inside (forward or backward of) a transformer block are also counted
        per SpatialTransformer layer in `per_block`."""

        def __init__(self, tracker=None):
            super().__init__()
            self.tracker = tracker
            self.per_block: Counter = Counter()
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
                    if self.tracker is not None:
                        for parent in self.tracker.parents:
                            if parent.endswith(".transformer_blocks.0"):
                                self.per_block[parent.split(".", 1)[1].rsplit(".transformer_blocks", 1)[0]] += 1
                                break
            return func(*args, **(kwargs or {}))

    return _OpCounter(tracker)


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
        self.sub = None  # the transformer block (inside a SpatialTransformer layer) running, if any
        names = {id(m): n for n, m in unet.named_modules()}
        self.handles = []
        for name, m in unet.named_modules():
            if type(m).__name__ == "BasicTransformerBlock":
                self.handles.append(m.register_forward_pre_hook(lambda mod, a, _n=name: setattr(self, "sub", _n)))
                self.handles.append(m.register_forward_hook(lambda mod, a, o: setattr(self, "sub", None)))
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
            if self.persistent and key in self.persistent:
                self.saved[key] = (t.untyped_storage().nbytes(), None, "persistent")
            else:
                self.saved[key] = (t.untyped_storage().nbytes(), self.layer, self.sub)
        return t

    def hooks(self):
        import torch

        return torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)

    def close(self):
        for h in self.handles:
            h.remove()

    def peaks(self, depth: dict | None = None, persistent_scale: float = 1.0) -> dict:
        """Bytes held for backward under each checkpointing variant.

        depth: layer -> transformer blocks in the full model, when this model has one per SpatialTransformer: a
        layer's saved bytes are then its own plus depth x its (only) block's, the blocks of a stack being alike;
        persistent_scale: the full model's step factors / this model's.
        """
        from unziplora_pack.unziplora.checkpointing import DEEP_BLOCKS

        per_layer = Counter()
        outside = 0
        for nbytes, layer, sub in self.saved.values():
            if layer is None:
                outside += nbytes * (persistent_scale if sub == "persistent" else 1)
            else:
                per_layer[layer] += nbytes * (depth.get(layer, 1) if depth and sub is not None else 1)
        out = {"none": outside + sum(per_layer.values())}
        deep = tuple(b + "." for b in DEEP_BLOCKS)
        for variant, ckpt in (("full", set(self.layers)), ("selective", {n for n in self.layers if n.startswith(deep)})):
            kept = outside + sum(b for n, b in per_layer.items() if n not in ckpt)
            # checkpointed layers keep their inputs (unless a kept layer saved them anyway)
            boundary = sum(b for k, (b, n) in self.inputs.items()
                           if n in ckpt and (k not in self.saved or self.saved[k][1] in ckpt))
            largest = max((b for n, b in per_layer.items() if n in ckpt), default=0)
            out[variant] = kept + boundary + largest
        return out


# transformer blocks per SpatialTransformer in SDXL (method.md's table)
FULL_DEPTH = {"input_blocks.4.1": 2, "input_blocks.5.1": 2, "input_blocks.7.1": 10, "input_blocks.8.1": 10,
              "middle_block.1": 10, "output_blocks.0.1": 10, "output_blocks.1.1": 10, "output_blocks.2.1": 10,
              "output_blocks.3.1": 2, "output_blocks.4.1": 2, "output_blocks.5.1": 2}


def model_config(kind: str) -> dict:
    """tiny: the tests' UNet; full: SDXL; full-d1: SDXL's widths and sizes with one transformer block per
    SpatialTransformer (70 -> 11 blocks); tiny-d2: the tiny UNet with two (what one more block costs in ops)."""
    from tiny_models import TINY_UNET_CONFIG

    cfg = dict(TINY_UNET_CONFIG) if kind.startswith("tiny") else full_sdxl_config()
    if kind in ("full-d1", "tiny-d2"):
        d = 1 if kind == "full-d1" else 2
        cfg.update(transformer_depth=[0, 0, d, d, d, d], transformer_depth_middle=d,
                   transformer_depth_output=[0, 0, 0, d, d, d, d, d, d])
    return cfg


def fake_unet(fake_mode, kind: str):
    import comfy.supported_models
    import torch

    from unziplora_pack.training.model_copy import as_plain_torch_layers

    with fake_mode:
        config = comfy.supported_models.SDXL(model_config(kind))
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


def _comparison_step(row, unet, rank, resolution, fake_mode, dtype=None):
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
        dt = dtype or torch.bfloat16
        autocast = torch.autocast("cpu", dtype=dt) if dt != torch.float32 else contextlib.nullcontext()
        with autocast:
            eps = unet(x0.to(dt), torch.full((1,), 500.0), context=streams.x.to(dt), y=adm.to(dt),
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


def _ours_step(unet, rank, resolution, fake_mode, mode="unziplora", optimizer="adamw"):
    import torch

    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.loop import Trainer, TrainInputs
    from unziplora_pack.unziplora.schedule import orth_loss

    streams, post, adm = _inputs(resolution)
    cfg = TrainConfig(mode=mode, rank=rank, resolution=resolution, checkpoint_every=0, precision="bf16",
                      gradient_checkpointing="off", optimizer=optimizer)
    trainer = Trainer(TrainInputs(unet=unet, streams=streams, posteriors=post, adm=adm), cfg, device="cpu")
    trainer.dtype = torch.bfloat16  # pick_precision keeps fp32 on a CPU; the bench simulates a bf16 GPU
    with fake_mode:
        state = trainer._setup()
        lora, optimizer, schedule = state.lora, state.optimizer, state.schedule
        # between selections, the common step: masks on, mergers trained on the overlap, L_orth on
        # (the selection itself is skipped: its top-K indexing has data-dependent shapes, and it runs 3 times a
        # run on one layer at a time; bench_train.py counts its ops)
        schedule.before_optimizer_step(0)
        schedule._set_masks_on(True)
        schedule._set_frozen(False)
        schedule._orth = True
        # what the loop builds once and reuses every step: the overlap keep-masks and L_orth's plan
        schedule._zero_merger_grads_off_overlap()
        orth_loss(lora)
    params = state.params

    def step():
        state.step = 2  # always the same step of the schedule
        return trainer.step(state)

    def prepared():
        return [t for _, _, d in lora.items() for pair in (d._prepared or {}).values() for t in pair]

    step.persistent = prepared
    return step, params, optimizer, lora.detach


def lora_bytes(targets, row: str, rank: int) -> tuple[int, int]:
    """(trainable fp32 bytes, bf16 step-factor bytes) of a row's LoRA on `targets`."""
    f = sum(t.in_features + t.out_features for t in targets)
    o = sum(t.out_features for t in targets)
    if row == "plain":
        return 4 * 2 * rank * f, 0
    return 4 * (2 * rank * f + 2 * o), 2 * 2 * rank * f


def full_model_bytes(kind: str) -> tuple[int, list]:
    """(bf16 weight bytes, LoRA targets) of the model the numbers are for, built on the meta device."""
    import comfy.supported_models
    import torch

    from unziplora_pack.unziplora.targets import find_targets

    model = comfy.supported_models.SDXL(model_config("full" if kind == "full-d1" else kind)).get_model(
        {}, device=torch.device("meta"))
    return sum(p.numel() * 2 for p in model.diffusion_model.parameters()), find_targets(model)


def measure(row: str, rank: int, resolution: int, kind: str, optimizer: str = "adamw") -> dict:
    import torch
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode
    from torch.utils.module_tracker import ModuleTracker

    from unziplora_pack.unziplora.targets import find_targets

    _register_cpu_flash_flops()
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    t0 = time.perf_counter()
    unet = fake_unet(fake_mode, kind)
    build = (lambda *a: _ours_step(*a, optimizer=optimizer)) if row == "ours" else (
        lambda *a: _comparison_step(row, *a))
    step, params, opt, close = build(unet, rank, resolution, fake_mode)
    with fake_mode:  # the optimiser's state exists from the first step on: one step on zero gradients
        for p in params:
            p.grad = torch.zeros_like(p)
        opt.step()
        opt.zero_grad(set_to_none=True)
    base = list(unet.parameters())
    acct = SavedTensors(unet, base + params, getattr(step, "persistent", None))
    tracker = ModuleTracker()
    counter = op_counter(tracker)
    flops = FlopCounterMode(display=False)
    with tracker, flops, counter, acct.hooks():
        step()
    acct.close()
    close()
    weights, targets = full_model_bytes(kind)
    trainable, persistent = lora_bytes(targets, row, rank)
    here_trainable, here_persistent = lora_bytes(find_targets(unet), row, rank)
    # the optimiser's state as it is (fp32 AdamW: two moments per parameter; adamw_bf16: half that), scaled from
    # this model's LoRA to the full one's
    state = sum(t.untyped_storage().nbytes() for st in opt.state.values() for t in st.values() if torch.is_tensor(t)
                and t.numel() > 1)
    state = state * trainable / here_trainable if here_trainable else state
    static = weights + trainable * 2 + state  # weights + LoRA + its gradients + the optimiser's state
    depth = FULL_DEPTH if kind == "full-d1" else None
    peaks = acct.peaks(depth, persistent / here_persistent if here_persistent else 1.0)
    kernels, tflop = counter.kernels, flops.get_total_flops()
    if depth:  # one more block of a stack costs what its one block costs
        kernels += sum((depth[layer] - 1) * n for layer, n in counter.per_block.items())
        for name, by_op in flops.get_flop_counts().items():
            if name.endswith(".transformer_blocks.0"):
                layer = name.split(".", 1)[1].rsplit(".transformer_blocks", 1)[0]
                tflop += (depth[layer] - 1) * sum(by_op.values())
    return dict(row=row, rank=rank, res=resolution, kind=kind, params_gib=weights / GIB,
                lora_m=trainable / 4e6, static_gib=static / GIB, opt_gib=state / GIB, optimizer=optimizer,
                **{f"mem_{k}": (static + v) / GIB for k, v in peaks.items()},
                saved_gib=peaks["none"] / GIB, kernels=kernels, views=counter.views,
                tflop=tflop / 1e12, seconds=time.perf_counter() - t0, top_ops=counter.by_op.most_common(8))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="full-d1", choices=["full-d1", "full", "tiny"],
                    help="full-d1 (default): SDXL's widths with one transformer block per stack, extrapolated to "
                         "SDXL's 70 (the blocks of a stack are alike); full: all 70 (hours on a loaded CPU); "
                         "tiny: the tests' UNet")
    ap.add_argument("--res", type=int, nargs="+", default=None)
    ap.add_argument("--rank", type=int, default=64)
    ap.add_argument("--rows", default="ours,plain,dense")
    ap.add_argument("--optimizer", default="adamw", choices=["adamw", "adamw_bf16"],
                    help="the ours row's optimiser: torch AdamW (fp32 moments) or training/adamw_bf16.py (the 8gb "
                         "preset's without bitsandbytes)")
    a = ap.parse_args()
    setup(cpu=True)
    resolutions = a.res or ([128] if a.model == "tiny" else [1024, 768])
    rows = []
    for i, res in enumerate(resolutions):
        # the comparison rows at the first resolution only (each row is minutes at full size)
        for row in a.rows.split(",") if i == 0 else ["ours"]:
            r = measure(row, a.rank, res, a.model, a.optimizer if row == "ours" else "adamw")
            rows.append(r)
            print(f"# {row} {res}px: {r['seconds']:.0f} s; top ops {r['top_ops']}", flush=True)
    print(f"{'row':<7}{'px':>5}{'rank':>5}{'LoRA M':>8}{'static':>8}{'saved':>7}{'none':>7}{'full':>7}{'select':>8}"
          f"{'kernels':>9}{'views':>8}{'TFLOP':>7}   (GiB; 'none/full/select' = peak by checkpointing)")
    for r in rows:
        print(f"{r['row']:<7}{r['res']:>5}{r['rank']:>5}{r['lora_m']:>8.1f}{r['static_gib']:>8.2f}{r['saved_gib']:>7.2f}"
              f"{r['mem_none']:>7.2f}{r['mem_full']:>7.2f}{r['mem_selective']:>8.2f}{r['kernels']:>9}{r['views']:>8}"
              f"{r['tflop']:>7.2f}")
    print("optimiser state per row: " + ", ".join(f"{r['row']} {r['res']} ({r['optimizer']}) {r['opt_gib']:.2f}"
                                                  for r in rows) + " GiB; an 8-bit AdamW needs 1/4 of fp32 AdamW's")
    return 0


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
