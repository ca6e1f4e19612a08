"""scripts/tiny_sdxl.py on the host the suite runs against (run this file on host a and on host b).

Issue 23: under ComfyUI 0.33.0 the generator wrote CLIP under model.diffusion_model. and dropped the UNet and the
VAE (717 keys, "Could not detect model type"); the suite never saw it because the tiny checkpoint it loads was
generated once under 0.3.75 and cached. These tests generate under the host they run on.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from comfy_server import _tiny_sdxl_module

tiny_sdxl = _tiny_sdxl_module()

# SDXL base 1.0's own numbers: the full-size file must match them part for part
CLIP_L, CLIP_G, VAE = 123_060_557, 694_659_841, 83_653_863
EXPECTED = {
    "tiny": {"keys": 1731, "unet": 159_696_644, "clip_l": CLIP_L, "clip_g": CLIP_G, "vae": VAE, "other": 0},
    "full": {"keys": 2515, "unet": 2_567_463_684, "clip_l": CLIP_L, "clip_g": CLIP_G, "vae": VAE, "other": 0},
}


@pytest.mark.parametrize("size", ["tiny", "full"])
def test_generator_layout_is_sdxl_at_each_size_on_this_host(size):
    """Every key and shape the generator writes, without memory (meta tensors): the stock loader's detection picks
    SDXL with the asked UNet config, and the UNet, CLIP-L/G and VAE it builds find all their tensors."""
    sd = tiny_sdxl.build_state_dict(size, "meta")
    found = tiny_sdxl.check_layout(sd)
    unet_config = found.pop("unet_config")
    assert found == {"model": "SDXL", **EXPECTED[size]}
    asked = tiny_sdxl.unet_config(size)
    for key in ("channel_mult", "transformer_depth", "transformer_depth_output", "transformer_depth_middle",
                "context_dim", "adm_in_channels", "model_channels"):
        assert unet_config[key] == asked[key], key
    assert all(v.dtype == torch.float16 for k, v in sd.items() if not k.endswith("position_ids"))


def test_check_layout_refuses_what_the_old_generator_wrote():
    """The 0.33.0 failure, rebuilt: CLIP's tensors under the UNet prefix and no UNet/VAE is not taken for SDXL."""
    sd = tiny_sdxl.build_state_dict("tiny", "meta")
    clip = {k: v for k, v in sd.items() if k.startswith("conditioner.embedders.")}
    broken = {f"model.diffusion_model.{k}": v for k, v in clip.items()}
    with pytest.raises(AssertionError, match="Could not detect model type|not SDXL"):
        tiny_sdxl.check_layout(broken)
    no_vae = {k: v for k, v in sd.items() if not k.startswith("first_stage_model.")}
    with pytest.raises(AssertionError, match="VAE: .* tensors missing"):
        tiny_sdxl.check_layout(no_vae)


def test_tiny_checkpoint_generated_on_this_host_loads_as_sdxl(tmp_path):
    """The real thing at tiny size: generated under this host, written, read back by ComfyUI's stock checkpoint
    loader as SDXL with every part at its size and the UNet's weights as written. The suite's cached checkpoint is
    used when this host made it (the generator records the ComfyUI version); else one is made here (~2 GB)."""
    import comfy.model_base
    import comfy.sd
    from comfyui_version import __version__
    from safetensors.torch import load_file

    path = tiny_sdxl.default_cache_dir() / tiny_sdxl.FILENAME
    if not (tiny_sdxl.is_current(path) and tiny_sdxl.file_metadata(path).get("unziplora.tiny.comfyui") == __version__):
        path = tiny_sdxl.generate(tmp_path, quiet=True)
    assert tiny_sdxl.is_current(path) and tiny_sdxl.file_metadata(path)["unziplora.tiny.comfyui"] == __version__
    assert tiny_sdxl.check_layout(tiny_sdxl.header_state_dict(path))["keys"] == EXPECTED["tiny"]["keys"]
    model, clip, vae = comfy.sd.load_checkpoint_guess_config(str(path), output_vae=True, output_clip=True)[:3]
    assert isinstance(model.model, comfy.model_base.SDXL)
    unet = model.model.diffusion_model
    assert sum(p.numel() for p in unet.parameters()) == EXPECTED["tiny"]["unet"]
    text = clip.cond_stage_model
    assert sum(p.numel() for p in text.clip_l.parameters()) + sum(p.numel() for p in text.clip_g.parameters()) \
        >= CLIP_L + CLIP_G - 77 - 77  # the position ids are buffers, not parameters
    assert sum(p.numel() for p in vae.first_stage_model.parameters()) == VAE
    written = load_file(str(path))
    for name, p in list(unet.named_parameters())[::40]:
        assert torch.equal(p.detach().cpu().half(), written[f"model.diffusion_model.{name}"]), name
    g = written["conditioner.embedders.1.model.transformer.resblocks.0.attn.in_proj_weight"]
    assert g.std() > 0.01  # CLIP-G was written from the generator's weights, not left empty


def test_cache_key_changes_with_the_code_that_makes_the_tensors(tmp_path):
    """A cached file is taken for current only when the code that made it is unchanged: editing how a tensor is
    initialised changes the key; editing the module's docstring does not."""
    script = tmp_path / "tiny_sdxl.py"

    def key_of(text: str) -> str:
        script.write_text(text)
        return subprocess.run([sys.executable, str(script), "--print-hash"], check=True, capture_output=True,
                              text=True).stdout.strip()

    src = open(tiny_sdxl.__file__).read()
    base = key_of(src)
    assert base == tiny_sdxl.config_hash()
    assert key_of(src.replace('"""A random-weight', '"""A (reworded) random-weight', 1)) == base
    changed = src.replace("p.fill_(1.0 if p_name == \"weight\" else 0.0)", "p.fill_(0.5 if p_name == \"weight\" else 0.0)")
    assert changed != src and key_of(changed) != base
    assert tiny_sdxl.config_hash("full") != base


def test_header_state_dict_gives_names_shapes_and_dtypes(tmp_path):
    """gpu_check verifies the full-size file it wrote from its header alone (6.5 GiB it does not read back)."""
    from safetensors.torch import save_file

    written = {"a.weight": torch.zeros(3, 5, dtype=torch.float16), "b": torch.zeros(7, dtype=torch.bfloat16),
               "c": torch.arange(77).expand(1, -1).contiguous()}
    save_file(written, str(tmp_path / "x.safetensors"), metadata={"k": "v"})
    header = tiny_sdxl.header_state_dict(tmp_path / "x.safetensors")
    assert {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in header.items()} == {
        k: (tuple(v.shape), v.dtype, "meta") for k, v in written.items()}
