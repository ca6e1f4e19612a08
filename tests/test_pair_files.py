"""Pair builders: every LoRA naming, the official script's output, B-LoRA, trained bundles (also through the loader
nodes) read to the same tensors; unsafe, misshaped or incomplete inputs fail naming the file."""

from __future__ import annotations

import os
import pickle

import pytest
import torch
from pair_helpers import save_random_run
from safetensors.torch import save_file
from test_lora_files import FORMATS, TINY_SHAPES, _ldm_to_diffusers, _Payload

from unziplora_pack.unziplora import lora_files as LF
from unziplora_pack.unziplora import pair as pairs
from unziplora_pack.unziplora.apply import apply_pair

RANK = 4


def _factors(seed: int, shapes=TINY_SHAPES) -> dict:
    g = torch.Generator().manual_seed(seed)
    return {p: (torch.randn(RANK, i, generator=g), torch.randn(o, RANK, generator=g)) for p, (i, o) in shapes.items()}


def _write(path, fmt: str, factors: dict) -> str:
    namer = FORMATS[fmt][0]
    sd = {}
    for p, (down, up) in factors.items():
        module, down_sfx, up_sfx = namer(p)
        sd[module + down_sfx], sd[module + up_sfx] = down, up
    os.makedirs(os.path.dirname(str(path)), exist_ok=True)
    save_file(sd, str(path))
    return str(path)


def _assert_side(side, factors):
    assert sorted(side.weights) == sorted(factors)
    for p, (down, up) in factors.items():
        assert torch.equal(side.weights[p].down, down) and torch.equal(side.weights[p].up, up), p
    side.validate(TINY_SHAPES)


@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_reads_to_the_same_tensors(tmp_path, fmt):
    content, style = _factors(1), _factors(2)
    handle = pairs.from_files(_write(tmp_path / f"c_{fmt}.safetensors", fmt, content),
                              _write(tmp_path / "s.safetensors", "kohya-ldm", style))
    assert handle.content.weights.format == fmt and handle.kind == "files"
    _assert_side(handle.content, content)
    _assert_side(handle.style, style)
    assert not handle.content.mergers and not handle.style.mergers  # plain LoRAs: mergers all 1
    assert handle.content.separated == (fmt == "unziplora-official")


def _official_mergers(path, role, vectors):
    torch.save({f"unet.{_ldm_to_diffusers(p)}.lora.merge_{role}": v for p, v in vectors.items()}, str(path))


def test_official_output_with_mergers(tmp_path):
    content, style = _factors(3), _factors(4)
    g = torch.Generator().manual_seed(5)
    mergers = {r: {p: torch.rand(o, generator=g) for p, (_, o) in TINY_SHAPES.items()} for r in pairs.SIDES}
    prefix = tmp_path / "out" / "cat"
    c_file = _write(tmp_path / "out" / "cat_content" / pairs.OFFICIAL_LORA_FILE, "unziplora-official", content)
    _write(tmp_path / "out" / "cat_style" / pairs.OFFICIAL_LORA_FILE, "unziplora-official", style)
    for role in pairs.SIDES:
        _official_mergers(f"{prefix}_merger_{role}.pth", role, mergers[role])
    for given in (prefix, f"{prefix}_content", f"{prefix}_merger_style.pth"):
        handle = pairs.from_official(str(given))
        assert handle.kind == "official" and handle.name == "cat"
        _assert_side(handle.content, content)
        _assert_side(handle.style, style)
        for role in pairs.SIDES:
            side = getattr(handle, role)
            assert side.separated and side.merger_source.endswith(f"cat_merger_{role}.pth")
            assert all(torch.equal(side.mergers[p], v) for p, v in mergers[role].items())
    # the files alone, as "Load LoRA Pair" sees them in models/loras: the mergers are found next to them
    assert pairs.find_mergers(c_file, "content") == f"{prefix}_merger_content.pth"
    assert pairs.find_mergers(c_file, "style") is None


def test_malicious_merger_pickle_is_refused(tmp_path):
    _write(tmp_path / "evil_content" / pairs.OFFICIAL_LORA_FILE, "unziplora-official", _factors(6))
    _write(tmp_path / "evil_style" / pairs.OFFICIAL_LORA_FILE, "unziplora-official", _factors(7))
    marker = tmp_path / "pwned"
    with open(tmp_path / "evil_merger_content.pth", "wb") as f:
        pickle.dump({"unet.x.lora.merge_content": _Payload(str(marker))}, f, protocol=2)
    with pytest.raises(ValueError, match="evil_merger_content.pth"):
        pairs.from_official(str(tmp_path / "evil"))
    assert not marker.exists()


def test_blora_splits_by_block(tmp_path):
    blocks = ("output_blocks.0.1.", "output_blocks.1.1.")
    factors = {p: f for p, f in _factors(8).items() if p.startswith(blocks)}
    handle = pairs.from_blora(_write(tmp_path / "blora.safetensors", "kohya-diffusers", factors))
    _assert_side(handle.content, {p: f for p, f in factors.items() if p.startswith(blocks[0])})
    _assert_side(handle.style, {p: f for p, f in factors.items() if p.startswith(blocks[1])})
    assert handle.kind == "blora" and not handle.content.separated and not handle.style.separated


def _run(tmp_path, name="cat", **kw):
    loras, bundles = tmp_path / "models" / "loras", tmp_path / "models" / "unziplora"
    saved = save_random_run(loras / "unziplora", name, TINY_SHAPES, seed=9, bundle_directory=bundles, **kw)
    return saved, loras, bundles


def test_bundle_finds_its_loras_and_prompts(tmp_path):
    saved, loras, _ = _run(tmp_path)
    handle = pairs.from_bundle(saved.bundle, [str(loras)])
    assert handle.kind == "bundle" and handle.name == "cat" and handle.prompt == "A sks cat in sketch style"
    assert (handle.content.prompt, handle.content.trigger) == ("A sks cat", "sks cat")
    assert (handle.style.prompt, handle.style.trigger) == ("A cat in sketch style", "sketch style")
    assert handle.content.source == saved.content and handle.content.separated
    assert set(handle.style.mergers) == set(TINY_SHAPES) and set(handle.style.masks) == set(TINY_SHAPES)
    assert pairs.find_mergers(saved.content, "content", [os.path.dirname(saved.bundle)]) == saved.bundle
    # a later run that took the name once this run's bundle was gone is not this run's: its mergers are not used
    other = save_random_run(tmp_path / "other_loras", "cat", TINY_SHAPES, seed=3, bundle_directory=tmp_path / "other",
                            prompt="A sks dog in oil paint")
    assert os.path.basename(other.bundle) == os.path.basename(saved.bundle)
    found = pairs.find_mergers(saved.content, "content", [os.path.dirname(other.bundle), os.path.dirname(saved.bundle)])
    assert found == saved.bundle
    naive, _, _ = _run(tmp_path, "plain", mode="naive")
    assert not pairs.from_bundle(naive.bundle, [str(loras)]).content.separated


def test_missing_or_misfit_files_are_named(tmp_path, tiny_sdxl):
    saved, loras, _ = _run(tmp_path)
    os.remove(saved.style)
    with pytest.raises(FileNotFoundError, match=r"cat\.safetensors: its style LoRA 'cat_style\.safetensors' was not"):
        pairs.from_bundle(saved.bundle, [str(loras)])

    g = torch.Generator().manual_seed(10)
    sd15 = {"lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight":
            torch.randn(RANK, 768, generator=g),
            "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k.lora_up.weight":
            torch.randn(640, RANK, generator=g)}
    save_file(sd15, str(tmp_path / "sd15_style.safetensors"))
    good = _write(tmp_path / "good.safetensors", "kohya-ldm", _factors(11))
    handle = pairs.from_files(good, str(tmp_path / "sd15_style.safetensors"))
    for mode in ("style", "both"):
        with pytest.raises(ValueError, match=r"sd15_style\.safetensors.*attn2_to_k.*768"):
            apply_pair(tiny_sdxl, handle, mode=mode)
    apply_pair(tiny_sdxl, handle, mode="content")  # the content side alone fits

    path = "output_blocks.0.1.transformer_blocks.0.attn1.to_q"
    bad = save_random_run(tmp_path / "bad", "bad", TINY_SHAPES, seed=12)
    tensors, meta = LF.load_tensors(bad.bundle)
    tensors[f"style.{path}.merger"] = torch.ones(5)
    os.remove(bad.bundle)
    save_file(tensors, bad.bundle, metadata=meta)
    with pytest.raises(ValueError, match=rf"bad\.safetensors: the style merger of {path} has 5 entries"):
        apply_pair(tiny_sdxl, pairs.from_bundle(bad.bundle), mode="both")


def test_loader_nodes_resolve_comfyui_folders(tmp_path, monkeypatch):
    import folder_paths

    from unziplora_pack.nodes.loaders import UnZipLoRALoader, UnZipLoRALoadBLoRA, UnZipLoRALoadFiles

    saved, loras, bundles = _run(tmp_path)
    exts = folder_paths.folder_names_and_paths["loras"][1]
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "loras", ([str(loras)], exts))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "unziplora", ([str(bundles)], {".safetensors"}))

    out = UnZipLoRALoader.execute("cat.safetensors").args
    assert out[1:6] == ("A sks cat in sketch style", "A sks cat", "A cat in sketch style", "sks cat", "sketch style")
    assert out[6] == ""  # the prediction type: this run's files do not record one
    assert out[0].content.source == saved.content
    pair = UnZipLoRALoadFiles.execute("unziplora/cat_content.safetensors", "unziplora/cat_style.safetensors",
                                      "auto").args[0]
    assert pair.content.merger_source == saved.bundle and pair.style.mergers  # found through the LoRA's metadata
    assert pair.prompt == "A sks cat in sketch style"
    plain = UnZipLoRALoadFiles.execute("unziplora/cat_content.safetensors", "unziplora/cat_style.safetensors",
                                       "none").args[0]
    assert not plain.content.mergers
    blocks = ("output_blocks.0.1.", "output_blocks.1.1.")
    _write(loras / "b.safetensors", "kohya-ldm", {p: f for p, f in _factors(13).items() if p.startswith(blocks)})
    blora = UnZipLoRALoadBLoRA.execute("b.safetensors").args[0]
    assert len(blora.content.weights) == len(blora.style.weights) == 8


def test_node_schemas_validate_and_every_input_has_a_tooltip():
    from unziplora_pack.nodes import apply, loaders, prompts

    classes = [loaders.UnZipLoRALoader, loaders.UnZipLoRALoadFiles, loaders.UnZipLoRALoadBLoRA, apply.UnZipLoRAApply,
               prompts.UnZipLoRAPrompts]
    for cls in classes:
        schema = cls.GET_SCHEMA()  # what ComfyUI's import does: duplicate ids etc. raise here
        assert schema.node_id == cls.__name__ and schema.category.startswith("UnZipLoRA/")
        assert all(i.tooltip for i in schema.inputs + schema.outputs), schema.node_id
