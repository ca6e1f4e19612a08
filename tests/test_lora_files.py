"""LoRA files: what the trainer writes loads in ComfyUI's stock loader at scale 1, sets are written all-or-nothing,
every third-party naming reads back to the same tensors, pickles are never executed, SD1.5 LoRAs are refused."""

from __future__ import annotations

import json
import logging
import os
import pickle

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from pair_helpers import attention_shapes
from tiny_models import TINY_UNET_CONFIG
from unziplora_pack.unziplora import lora_files as LF
from unziplora_pack.unziplora import lora_formats as LR

RANK = 4
# the tiny SDXL's attention linears computed from its config; the stock-loader test checks them on the live model
TINY_SHAPES = attention_shapes(TINY_UNET_CONFIG)


def _ldm_to_diffusers(path: str) -> str:
    """Written out by hand (not with the module's table) so the readers are checked against an independent map."""
    block, _, rest = path.partition(".1.transformer_blocks.")
    fixed = {"input_blocks.4": "down_blocks.1.attentions.0", "input_blocks.5": "down_blocks.1.attentions.1",
             "input_blocks.7": "down_blocks.2.attentions.0", "input_blocks.8": "down_blocks.2.attentions.1",
             "middle_block": "mid_block.attentions.0"}
    if block in fixed:
        head = fixed[block]
    else:
        n = int(block.split(".")[1])
        head = f"up_blocks.{n // 3}.attentions.{n % 3}"
    return f"{head}.transformer_blocks.{rest}"


def _factors(shapes: dict, seed: int, dtype=torch.float32) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {p: ((torch.randn(RANK, i, generator=g) * 0.1).to(dtype), (torch.randn(o, RANK, generator=g) * 0.1).to(dtype))
            for p, (i, o) in sorted(shapes.items())}


def _info(**kw) -> LF.RunInfo:
    base = dict(prompt="A sks cat in sketch style", content_prompt="A sks cat", style_prompt="A cat in sketch style",
                content_trigger="sks cat", style_trigger="sketch style", mode="unziplora",
                hyperparameters={"rank": RANK, "steps": 600, "lr": 5e-5}, steps_done=600,
                base_model_name="sd_xl_base_1.0.safetensors", base_model_hash="abc123")
    base.update(kw)
    return LF.RunInfo(**base)


def _save_tiny(tmp_path, name="cat"):
    shapes = TINY_SHAPES
    content, style = _factors(shapes, 1), _factors(shapes, 2)
    g = torch.Generator().manual_seed(3)
    mergers = {s: {p: torch.rand(o, generator=g) for p, (_, o) in shapes.items()} for s in LF.SIDES}
    masks = {s: {p: (torch.rand(o, generator=g) > 0.7).float() for p, (_, o) in shapes.items()} for s in LF.SIDES}
    saved = LF.save_unziplora(str(tmp_path), name, content, style, _info(), mergers=mergers, masks=masks,
                              bundle_directory=str(_bundles(tmp_path)))
    return saved, shapes, mergers, masks


def _bundles(tmp_path):
    """The bundles' folder (the pack's models/unziplora) beside the LoRAs' folder."""
    d = tmp_path.parent / f"{tmp_path.name}_bundles"
    d.mkdir(exist_ok=True)
    return d


def _lora_listing(directory: str) -> list[str]:
    """Exactly what ComfyUI's LoRA list (folder_paths.get_filename_list("loras")) shows for one folder."""
    import folder_paths

    files, _ = folder_paths.recursive_search(directory, excluded_dir_names=[".git"])
    return folder_paths.filter_files_extensions(files, folder_paths.folder_names_and_paths["loras"][1])


# ---------------------------------------------------------------------------------------------------- writing


def test_written_pair_loads_in_comfyui_stock_loader_at_scale_one(tiny_sdxl, tmp_path, caplog):
    import comfy.lora
    import comfy.sd
    import comfy.utils

    saved, shapes, _, _ = _save_tiny(tmp_path)
    assert shapes == LR.shapes_from_model(tiny_sdxl) and len(shapes) == 88  # 11 attention blocks x 8 linears
    unet = tiny_sdxl.model.diffusion_model
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    for path in (saved.content, saved.style):
        sd = comfy.utils.load_torch_file(path)
        assert len(sd) == 3 * len(shapes)
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            patches = comfy.lora.load_lora(sd, comfy.lora.model_lora_keys_unet(tiny_sdxl.model, {}))
            patched, _ = comfy.sd.load_lora_for_models(tiny_sdxl, None, sd, 1.0, 0)
        assert not [r for r in caplog.records if "not loaded" in r.getMessage().lower()], caplog.text
        assert set(patches) == {f"diffusion_model.{p}.weight" for p in shapes}
        patched.patch_model()
        try:
            after = unet.state_dict()
            for k, w in before.items():
                path_ = k[: -len(".weight")] if k.endswith(".weight") else None
                if path_ in shapes:
                    name = LF.kohya_name(path_)
                    expected = sd[f"{name}.lora_up.weight"].float() @ sd[f"{name}.lora_down.weight"].float()
                    assert float((after[k] - w - expected).abs().max()) <= 1e-5, k
                    assert float(expected.abs().max()) > 1e-3
                else:
                    assert torch.equal(after[k], w), f"{k} changed but is not a LoRA target"
        finally:
            patched.unpatch_model()
        restored = unet.state_dict()
        assert all(torch.equal(restored[k], w) for k, w in before.items())


def test_kohya_writer_round_trips_through_reader(tmp_path):
    shapes = dict(list(attention_shapes().items())[:12])
    factors = _factors(shapes, 5, torch.float16)
    sd = LF.lora_to_kohya(factors)
    assert sd[LF.kohya_name(next(iter(shapes))) + ".alpha"].item() == RANK
    save_file(sd, str(tmp_path / "k.safetensors"))
    lora = LR.read_lora(str(tmp_path / "k.safetensors"))
    assert lora.format == "kohya-ldm" and set(lora) == set(shapes)
    for p, (down, up) in factors.items():
        assert torch.equal(lora[p].down, down) and torch.equal(lora[p].up, up) and lora[p].scale == 1.0


def test_metadata_and_bundle_round_trip(tmp_path):
    saved, shapes, mergers, masks = _save_tiny(tmp_path)
    assert saved.name == "cat" and saved.bundle == str(_bundles(tmp_path) / "cat.safetensors")
    for role, path in (("content", saved.content), ("style", saved.style)):
        with safe_open(path, framework="pt") as f:
            meta = f.metadata()
        assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/lora"
        assert meta["modelspec.sai_model_spec"] == "1.0.0"
        assert meta["modelspec.title"] == f"cat {role}"
        assert meta["modelspec.trigger_phrase"] == ("sks cat" if role == "content" else "sketch style")
        assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == (str(RANK), str(RANK))
        assert meta["ss_network_module"] == "networks.lora"
        assert meta["ss_base_model_version"] == "sdxl_base_v1-0"
        assert meta["unziplora.role"] == role
        assert (meta["unziplora.prompt"], meta["unziplora.content_prompt"], meta["unziplora.style_prompt"]) == (
            "A sks cat in sketch style", "A sks cat", "A cat in sketch style")
        assert meta["unziplora.mode"] == "unziplora" and meta["unziplora.steps"] == "600"
        assert json.loads(meta["unziplora.hyperparameters"]) == {"rank": RANK, "steps": 600, "lr": 5e-5}
        assert (meta["unziplora.base_model"], meta["unziplora.base_model_hash"]) == ("sd_xl_base_1.0.safetensors", "abc123")
        assert meta["unziplora.pack_version"] == LF.pack_version() != "unknown"
        assert meta["unziplora.bundle"] == "cat.safetensors"
        assert all(isinstance(v, str) for v in meta.values())
    bundle = LF.read_bundle(saved.bundle)
    # the LoRAs are named by file name only (pair.from_bundle looks them up in the LoRA folders)
    assert [bundle.metadata[f"unziplora.{side}_lora"] for side in LF.SIDES] == [
        os.path.basename(saved.content), os.path.basename(saved.style)]
    assert bundle.metadata["unziplora.content_trigger"] == "sks cat"
    for side in LF.SIDES:
        assert set(bundle.mergers[side]) == set(shapes) == set(bundle.masks[side])
        for p in shapes:
            assert torch.equal(bundle.mergers[side][p], mergers[side][p])
            assert bundle.masks[side][p].dtype == torch.bool
            assert torch.equal(bundle.masks[side][p], masks[side][p] != 0)


# ---------------------------------------------------------------------------------------------------- safe writing


def test_unique_name_never_overwrites(tmp_path):
    d = str(tmp_path)
    assert LF.unique_name(d, "cat") == "cat"
    (tmp_path / "cat_content.safetensors").write_bytes(b"x")
    assert LF.unique_name(d, "cat") == "cat_2"
    (_bundles(tmp_path) / "cat_2.safetensors").write_bytes(b"x")  # a bundle under the name takes it too
    assert LF.unique_name(d, "cat", also=[(str(_bundles(tmp_path)), LF.BUNDLE_SUFFIX)]) == "cat_3"
    assert "/" not in LF.unique_name(d, "../../etc/x") and not LF.unique_name(d, ".hidden").startswith(".")
    first, _, _, _ = _save_tiny(tmp_path, "dog")
    data = open(first.content, "rb").read()
    second, _, _, _ = _save_tiny(tmp_path, "dog")
    assert second.name == "dog_2" and open(first.content, "rb").read() == data
    with pytest.raises(FileExistsError):  # the low-level writer refuses too
        LF.write_file_set(d, [("dog_content.safetensors", {}, {})])


@pytest.mark.parametrize("fail_at", ["write", "rename"])
def test_failed_set_leaves_no_file_and_temps_are_never_listed(tmp_path, monkeypatch, fail_at):
    d, bundles = str(tmp_path), str(_bundles(tmp_path))
    calls = {"write": 0, "rename": 0}
    real_save, real_rename = LF._save_safetensors, LF._rename

    def save(tensors, path, metadata):
        calls["write"] += 1
        if fail_at == "write" and calls["write"] == 3:
            raise OSError("disk full (simulated)")
        real_save(tensors, path, metadata)

    def rename(src, dst):
        calls["rename"] += 1
        if calls["rename"] == 1:  # all three temps exist now
            present = os.listdir(d) + os.listdir(bundles)
            assert len(present) == 3 and all(n.startswith(".") and n.endswith(".tmp") for n in present)
            assert _lora_listing(d) == []
        if fail_at == "rename" and calls["rename"] == 2:
            raise OSError("rename failed (simulated)")
        real_rename(src, dst)

    monkeypatch.setattr(LF, "_save_safetensors", save)
    monkeypatch.setattr(LF, "_rename", rename)
    with pytest.raises(OSError, match="simulated"):
        _save_tiny(tmp_path)
    assert os.listdir(d) == [] and os.listdir(bundles) == []
    monkeypatch.setattr(LF, "_save_safetensors", real_save)
    monkeypatch.setattr(LF, "_rename", real_rename)
    saved, _, _, _ = _save_tiny(tmp_path)
    assert sorted(os.listdir(d)) == ["cat_content.safetensors", "cat_style.safetensors"]
    assert os.listdir(bundles) == ["cat.safetensors"]  # the bundle is not a LoRA: it is kept out of the LoRA folder
    assert _lora_listing(d) == ["cat_content.safetensors", "cat_style.safetensors"]


# ---------------------------------------------------------------------------------------------------- reading

PATHS = [
    "input_blocks.4.1.transformer_blocks.0.attn1.to_q",
    "input_blocks.8.1.transformer_blocks.1.attn2.to_k",
    "middle_block.1.transformer_blocks.9.attn1.to_out.0",
    "output_blocks.0.1.transformer_blocks.0.attn2.to_v",
    "output_blocks.1.1.transformer_blocks.3.attn2.to_out.0",
    "output_blocks.5.1.transformer_blocks.1.attn1.to_k",
]
_LINEARS = sorted(LR.ATTENTION_LINEARS, key=len, reverse=True)


def _split_linear(path):
    lin = next(x for x in _LINEARS if path.endswith("." + x))
    return path[: -len(lin) - 1], lin


def _fmt_kohya_ldm(p):
    return "lora_unet_" + p.replace(".", "_"), ".lora_down.weight", ".lora_up.weight"


def _fmt_kohya_diffusers(p):
    return "lora_unet_" + _ldm_to_diffusers(p).replace(".", "_"), ".lora_down.weight", ".lora_up.weight"


def _fmt_comfyui(p):
    return "diffusion_model." + p, ".lora_down.weight", ".lora_up.weight"


def _fmt_peft(p):
    return "unet." + _ldm_to_diffusers(p), ".lora_A.weight", ".lora_B.weight"


def _fmt_attnprocs(p):
    block, lin = _split_linear(_ldm_to_diffusers(p))
    attn, proj = lin.split(".", 1)
    return f"unet.{block}.{attn}.processor.{proj.replace('.0', '')}", "_lora.down.weight", "_lora.up.weight"


def _fmt_diffusers(p):
    return "unet." + _ldm_to_diffusers(p), ".lora.down.weight", ".lora.up.weight"


def _fmt_official(p):
    return "unet.unet." + _ldm_to_diffusers(p), ".lora.down.weight", ".lora.up.weight"


FORMATS = {
    "kohya-ldm": (_fmt_kohya_ldm, "lora_te1_text_model_encoder_layers_0_self_attn_q_proj",
                  "lora_unet_input_blocks_4_1_transformer_blocks_0_ff_net_2"),
    "kohya-diffusers": (_fmt_kohya_diffusers, "lora_te2_text_model_encoder_layers_0_mlp_fc1",
                        "lora_unet_down_blocks_1_attentions_0_proj_in"),
    "comfyui": (_fmt_comfyui, "text_encoders.clip_l.transformer.text_model.encoder.layers.0.mlp.fc1",
                "diffusion_model.input_blocks.4.1.proj_out"),
    "diffusers-peft": (_fmt_peft, "text_encoder.text_model.encoder.layers.0.self_attn.k_proj",
                       "unet.down_blocks.1.attentions.0.transformer_blocks.0.ff.net.0.proj"),
    "diffusers-attnprocs": (_fmt_attnprocs, "text_encoder_2.text_model.encoder.layers.1.self_attn.v_proj",
                            "unet.mid_block.attentions.0.proj_in"),
    "diffusers": (_fmt_diffusers, "text_encoder.text_model.encoder.layers.0.self_attn.out_proj",
                  "unet.up_blocks.0.attentions.1.proj_out"),
    "unziplora-official": (_fmt_official, "text_encoder.text_model.encoder.layers.0.self_attn.q_proj",
                           "unet.unet.up_blocks.0.resnets.0.conv1"),
}


def _build(fmt, factors, alpha_scale=None):
    namer, te_module, other_module = FORMATS[fmt]
    sd = {}
    for p, (down, up) in factors.items():
        module, down_sfx, up_sfx = namer(p)
        sd[module + down_sfx], sd[module + up_sfx] = down, up
        if alpha_scale is not None:
            sd[module + ".alpha"] = torch.tensor(float(RANK) * alpha_scale)
    _, down_sfx, up_sfx = namer(PATHS[0])
    for module in (te_module, other_module):
        sd[module + down_sfx], sd[module + up_sfx] = torch.zeros(RANK, 8), torch.zeros(8, RANK)
    return sd


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_reads_back_identical_tensors(tmp_path, fmt):
    g = torch.Generator().manual_seed(7)
    factors = {p: (torch.randn(RANK, 16, generator=g).half(), torch.randn(24, RANK, generator=g).half()) for p in PATHS}
    alpha_scale = 0.5 if fmt.startswith("kohya") else None
    sd = _build(fmt, factors, alpha_scale)
    file = tmp_path / f"{fmt}.safetensors"
    save_file(sd, str(file))
    for source in (str(file), sd):
        lora = LR.read_lora(source)
        assert lora.format == fmt
        assert sorted(lora) == sorted(PATHS)
        for p, (down, up) in factors.items():
            assert torch.equal(lora[p].down, down) and torch.equal(lora[p].up, up)
            assert lora[p].scale == (alpha_scale or 1.0)
        assert len(lora.aside["text_encoder"]) == 2 and len(lora.aside["unet_other"]) == 2, lora.aside
    assert file.name in LR.read_lora(str(file)).summary()


def test_blora_split_by_block(tmp_path):
    g = torch.Generator().manual_seed(8)
    paths = [f"output_blocks.{b}.1.transformer_blocks.{t}.{lin}" for b in (0, 1) for t in (0, 9)
             for lin in LR.ATTENTION_LINEARS]
    factors = {p: (torch.randn(RANK, 16, generator=g), torch.randn(24, RANK, generator=g)) for p in paths}
    (tmp_path / "blora").mkdir()
    save_file(_build("diffusers", factors), str(tmp_path / "blora" / "pytorch_lora_weights.safetensors"))
    content, style = LR.split_blora(str(tmp_path / "blora"))  # diffusers saves a folder
    assert sorted(content) == sorted(p for p in paths if p.startswith("output_blocks.0.1."))
    assert sorted(style) == sorted(p for p in paths if p.startswith("output_blocks.1.1."))
    for half in (content, style):
        for p, w in half.items():
            assert torch.equal(w.down, factors[p][0]) and torch.equal(w.up, factors[p][1])
    with pytest.raises(ValueError, match="not a B-LoRA"):
        LR.split_blora(_build("kohya-ldm", {PATHS[0]: factors[paths[0]]}))


def test_official_merger_file_reads_with_weights_only(tmp_path):
    g = torch.Generator().manual_seed(9)
    vecs = {p: torch.rand(24, generator=g) for p in PATHS}
    file = tmp_path / "out_merger_content.pth"
    torch.save({f"unet.{_ldm_to_diffusers(p)}.lora.merge_content": v for p, v in vecs.items()}, str(file))
    mergers = LR.read_official_mergers(str(file))
    assert set(mergers) == {"content"} and sorted(mergers["content"]) == sorted(PATHS)
    assert all(torch.equal(mergers["content"][p], v) for p, v in vecs.items())
    with pytest.raises(ValueError, match="out_merger_content.pth"):  # rank-sized (fork) mergers do not fit
        LR.read_official_mergers(str(file), expected=attention_shapes())


class _Payload:
    """Unpickling this creates a file: stands in for any code a malicious pickle would run."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, writer):
    probe = tmp_path / "probe"
    pickle.loads(pickle.dumps(_Payload(str(probe)))).close()
    assert probe.exists()  # the payload really does run when unpickled normally
    marker = tmp_path / "pwned"
    file = tmp_path / "evil_merger_content.pth"
    obj = {"unet.up_blocks.0.attentions.0.transformer_blocks.0.attn1.to_q.lora.merge_content": _Payload(str(marker))}
    if writer == "torch.save":
        torch.save(obj, str(file))
    else:
        with open(file, "wb") as f:
            pickle.dump(obj, f, protocol=2)  # torch.load's own protocol: no warning noise
    for reader in (LR.read_official_mergers, LR.read_lora):
        with pytest.raises(ValueError, match="evil_merger_content.pth"):
            reader(str(file))
    assert not marker.exists()


def test_sd15_lora_is_refused_against_sdxl_shapes(tmp_path):
    g = torch.Generator().manual_seed(10)
    # SD1.5: cross-attention reads 768-wide CLIP tokens; down_blocks.1 is 640 wide there too
    sd = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
          torch.randn(RANK, 768, generator=g),
          "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
          torch.randn(640, RANK, generator=g)}
    file = tmp_path / "sd15_style.safetensors"
    save_file(sd, str(file))
    lora = LR.read_lora(str(file))
    for expected in (attention_shapes(), TINY_SHAPES):
        with pytest.raises(ValueError, match=r"sd15_style\.safetensors.*attn2_to_k.*768"):
            LR.validate_against(lora, expected)
    # a layer SDXL does not have at all (SD1.5 has attention in down_blocks.0) is named too
    sd2 = dict(sd)
    sd2.update({"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_down.weight": torch.zeros(RANK, 320),
                "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q.lora_up.weight": torch.zeros(320, RANK)})
    sd2[next(iter(sd))] = torch.randn(RANK, 2048, generator=g)
    lora2 = LR.read_lora(sd2, source_name="mixed.safetensors")
    with pytest.raises(ValueError, match=r"mixed\.safetensors.*down_blocks_0_attentions_0"):
        LR.validate_against(lora2, attention_shapes())
    # positive control: a LoRA shaped for the tiny model passes against the tiny model
    good = LR.read_lora(LF.lora_to_kohya(_factors(TINY_SHAPES, 11)))
    LR.validate_against(good, TINY_SHAPES)


def test_sdxl_name_table_covers_the_560_targets():
    shapes = attention_shapes()
    assert len(shapes) == 560
    assert shapes["input_blocks.4.1.transformer_blocks.0.attn2.to_k"] == (2048, 640)
    assert shapes["output_blocks.0.1.transformer_blocks.9.attn1.to_out.0"] == (1280, 1280)
    table = LR.name_table()
    for p in shapes:
        assert table.kohya[p.replace(".", "_")][0] == p
        assert table.kohya[_ldm_to_diffusers(p).replace(".", "_")][0] == p
