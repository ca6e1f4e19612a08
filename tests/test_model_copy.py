"""The private training copy: built from the model's config, sharing nothing with the live module tree.

Under dynamic VRAM (comfy-aimdo) ComfyUI's live modules carry native handles; these tests give a tiny live
model the same kinds of attributes and check the copy never copies, frees or calls them."""

from __future__ import annotations

import ctypes
import gc
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from tiny_models import TINY_UNET_CONFIG, init_weights_, random_conditioning

from unziplora_pack.training.model_copy import private_unet_copy

REPO = Path(__file__).resolve().parents[1]

FREED: list[str] = []  # tokens of fake pinned host buffers whose __del__ ran
CALLED: list[str] = []  # keys of fake lowvram functions that were called


class FakePinState:
    """Stands for comfy-aimdo's HostBuffer: __del__ frees native memory, so a duplicate frees the live one's."""

    def __init__(self, token: str):
        self.token = token

    def __del__(self):
        FREED.append(self.token)


class FakeLowVramPatch:
    def __init__(self, key: str):
        self.key = key

    def __call__(self, weight, *args, **kwargs):
        CALLED.append(self.key)
        return weight


def _forward(unet, seed=0):
    x, pooled = random_conditioning(seed)
    g = torch.Generator().manual_seed(seed)
    latent = torch.randn(1, 4, 8, 8, generator=g)
    y = torch.cat([pooled, torch.zeros(1, 2816 - 1280)], dim=1)
    with torch.no_grad():
        return unet(latent, torch.tensor([500.0]), context=x, y=y)


def _dress_like_dynamic_vram(model_patcher, with_pointer=True):
    """Give every weight-carrying live module the attributes ModelPatcherDynamic.load() sets."""
    keep = []
    for name, m in model_patcher.model.diffusion_model.named_modules():
        if getattr(m, "weight", None) is None:
            continue
        if with_pointer:
            handle = ctypes.c_uint64(0xDEAD)
            keep.append(handle)
            m._v = ctypes.pointer(handle)  # a VBAR allocation: deepcopy raises on it
        m._pin_state = FakePinState(name)
        m.weight_lowvram_function = FakeLowVramPatch(name + ".weight")
        m.bias_lowvram_function = None
        m.weight_function = []
    return keep


@pytest.mark.parametrize("with_pointer", [True, False], ids=["ctypes-pointer", "pin-buffer-only"])
def test_copy_neither_copies_frees_nor_calls_native_handles(tiny_sdxl, with_pointer):
    live = tiny_sdxl.model.diffusion_model
    expected = _forward(live)
    keep = _dress_like_dynamic_vram(tiny_sdxl, with_pointer)
    FREED.clear()
    CALLED.clear()

    unet, _ = private_unet_copy(tiny_sdxl)

    for m in unet.modules():
        assert not any(hasattr(m, a) for a in ("_v", "_pin_state", "weight_lowvram_function", "weight_function"))
    live_ptrs = {t.data_ptr() for t in live.state_dict().values()}
    assert not live_ptrs & {t.data_ptr() for t in unet.state_dict().values()}
    torch.testing.assert_close(_forward(unet), expected)
    del unet
    gc.collect()
    assert FREED == [], f"the copy freed the live model's host buffers: {FREED[:3]}"
    assert CALLED == [], f"the copy called the live model's lowvram functions: {CALLED[:3]}"
    assert all(isinstance(m._pin_state, FakePinState) for m in live.modules() if hasattr(m, "_pin_state"))
    del keep


def test_copy_folds_graph_side_patches(tiny_sdxl):
    key = "diffusion_model.input_blocks.4.1.transformer_blocks.0.attn2.to_k.weight"
    w = tiny_sdxl.model.state_dict()[key]
    delta = torch.randn(w.shape, generator=torch.Generator().manual_seed(5)) * 0.1
    patched = tiny_sdxl.clone()
    patched.add_patches({key: (delta,)}, 0.5)  # a "diff" patch: w + 0.5 * delta

    unet, fp_patched = private_unet_copy(patched)
    _, fp_plain = private_unet_copy(tiny_sdxl)

    name = key[len("diffusion_model."):]
    torch.testing.assert_close(unet.state_dict()[name], w + 0.5 * delta)
    other = "input_blocks.4.1.transformer_blocks.0.attn2.to_v.weight"
    torch.testing.assert_close(unet.state_dict()[other], tiny_sdxl.model.diffusion_model.state_dict()[other])
    assert fp_patched != fp_plain


def test_copy_keeps_checkpoint_dtype_and_is_trainable_outside_inference_mode(tiny_sdxl):
    tiny_sdxl.model.diffusion_model.to(torch.float16)
    with torch.inference_mode():
        unet, _ = private_unet_copy(tiny_sdxl)
    assert {t.dtype for t in unet.state_dict().values()} == {torch.float16}
    assert not any(t.is_inference() for t in unet.state_dict().values())
    assert all(type(m).__module__.startswith(("torch.nn", "comfy.ldm")) for m in unet.modules())


# SDXL-family shapes at tiny width: the same block naming, other depths (cf. ComfyUI's SSD1B, Segmind_Vega,
# KOALA_700M configs, whose full detected configs differ from SDXL's in these keys)
FAMILY = {
    "ssd1b-like": dict(transformer_depth=[0, 0, 2, 2, 1, 1], transformer_depth_middle=0,
                       transformer_depth_output=[0, 0, 0, 1, 1, 2, 2, 1, 1]),
    "vega-like": dict(transformer_depth=[0, 0, 1, 1, 2, 2], transformer_depth_middle=-1,
                      transformer_depth_output=[0, 0, 0, 1, 1, 1, 2, 2, 2]),
    "koala-like": dict(num_res_blocks=[1, 1, 1], transformer_depth=[0, 1, 2], transformer_depth_middle=2,
                       transformer_depth_output=[0, 0, 1, 1, 2, 2]),
}


@pytest.mark.parametrize("family", sorted(FAMILY))
def test_copy_builds_sdxl_family_from_their_config(family):
    import comfy.model_patcher
    import comfy.supported_models

    config = comfy.supported_models.SDXL(dict(TINY_UNET_CONFIG, **FAMILY[family]))
    model = config.get_model({})
    init_weights_(model.diffusion_model, 1)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=torch.device("cpu"),
                                               offload_device=torch.device("cpu"))
    unet, _ = private_unet_copy(patcher)
    assert list(unet.state_dict()) == list(model.diffusion_model.state_dict())
    torch.testing.assert_close(_forward(unet, 2), _forward(model.diffusion_model, 2))


def test_copy_names_a_weight_the_config_does_not_have(tiny_sdxl):
    tiny_sdxl.model.diffusion_model.register_buffer("stray", torch.zeros(1))
    with pytest.raises(KeyError, match="stray"):
        private_unet_copy(tiny_sdxl)


def test_preparing_the_copy_holds_one_copy_of_the_weights():
    """Peak host RAM while copying a ~0.4 GB fp16 UNet stays under the live weights' size + the copy + a
    little: the weights stream one tensor at a time into the meta-built module (no state dict, no fp32)."""
    out = subprocess.run([sys.executable, str(REPO / "bench" / "copy_peak_ram.py"), "--size", "medium"],
                         capture_output=True, text=True, timeout=300, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    r = json.loads(out.stdout.strip().splitlines()[-1])
    extra = r["peak_rss"] - r["rss_before_copy"]
    assert r["copy_bytes"] == r["weight_bytes"]
    assert extra <= r["weight_bytes"] * 1.1 + 96 * 2**20, r
