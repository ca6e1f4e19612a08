"""What a training run saves, and how, so that the files load anywhere and a crash never leaves half a set.

For a run named NAME, with its LoRAs in DIRECTORY (models/loras/unziplora/) and its bundle in BUNDLE_DIRECTORY
(models/unziplora/, a folder no LoRA list shows):
    DIRECTORY/NAME_content.safetensors   kohya keys with LDM names, alpha = rank (scale 1), hard mask baked into
    DIRECTORY/NAME_style.safetensors     `up`: ordinary SDXL LoRAs for ComfyUI, A1111/Forge, kohya and diffusers
    BUNDLE_DIRECTORY/NAME.safetensors    the bundle: mergers and masks per layer and side, the prompts, trigger
                                         words, mode and the two LoRA file names: what the combined mode needs.

The trainer hands over plain tensors keyed by LDM path ("input_blocks.4.1.transformer_blocks.0.attn2.to_k"), so
this module does not depend on its classes. Readers for other people's files live in lora_formats.py.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import threading
import uuid
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field, replace

import torch

from .lora_formats import LoRAWeights
from .model_card import prediction_metadata, describe_run, usage_hint
from .safe_load import load_tensors

CONTENT_SUFFIX = "_content.safetensors"
STYLE_SUFFIX = "_style.safetensors"
BUNDLE_SUFFIX = ".safetensors"  # in the bundle's own folder
ALL_SUFFIXES = (CONTENT_SUFFIX, STYLE_SUFFIX)
# Temps end in ".tmp" (not in folder_paths.supported_pt_extensions) and start with "." so no list shows them.
TEMP_EXT = ".tmp"

ARCHITECTURE = "stable-diffusion-xl-v1-base/lora"
BASE_MODEL_VERSION = "sdxl_base_v1-0"
FORMAT_VERSION = "1"
SIDES = ("content", "style")

# Name choice and renames are serialised (re-entrant: save_unziplora holds it around write_file_set) so two jobs
# finishing together in this process cannot pick the same free name.
_LOCK = threading.RLock()


def kohya_name(path: str) -> str:
    """kohya module name for an LDM path; ComfyUI maps it back through model_lora_keys_unet."""
    return "lora_unet_" + path.replace(".", "_")


def _factor_triplet(value) -> tuple[torch.Tensor, torch.Tensor, float]:
    if isinstance(value, LoRAWeights):
        return value.down, value.up, value.scale
    if len(value) == 2:
        return value[0], value[1], 1.0
    return value[0], value[1], float(value[2])


def _cpu_copy(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    # clone: safetensors refuses tensors that share storage (views of one buffer, slices of a fused weight)
    return t.detach().to(device="cpu", dtype=dtype).contiguous().clone()


def lora_to_kohya(factors: Mapping, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """{ldm path: (down [r,in], up [out,r]) or LoRAWeights} -> kohya state dict (alpha = rank * scale).

    alpha is stored in fp32 so any rank/scale survives exactly; loaders read it with .item().
    """
    out: dict[str, torch.Tensor] = {}
    for path, value in factors.items():
        down, up, scale = _factor_triplet(value)
        if down.ndim != 2 or up.ndim != 2 or down.shape[0] != up.shape[1] or down.shape[0] == 0:
            raise ValueError(f"{path}: expected down [r, in] and up [out, r], got {tuple(down.shape)} and {tuple(up.shape)}")
        name = kohya_name(path)
        if f"{name}.lora_down.weight" in out:
            raise ValueError(f"{path}: two layers share the kohya name {name}")
        out[f"{name}.lora_down.weight"] = _cpu_copy(down, dtype)
        out[f"{name}.lora_up.weight"] = _cpu_copy(up, dtype)
        out[f"{name}.alpha"] = torch.tensor(float(down.shape[0]) * scale, dtype=torch.float32)
    return out


# ---------------------------------------------------------------------------------------------------- metadata


@dataclass
class RunInfo:
    """What a run was about; written into every file's metadata so the files explain themselves."""

    prompt: str  # combined prompt p, e.g. "A sks cat in sketch style"
    content_prompt: str  # p_c, e.g. "A sks cat"
    style_prompt: str  # p_s, e.g. "A cat in sketch style"
    mode: str = "unziplora"
    content_trigger: str = ""  # words that call up the content LoRA ("sks cat"); default: the content prompt
    style_trigger: str = ""  # ("in sketch style"); default: the style prompt
    hyperparameters: dict = field(default_factory=dict)
    steps_done: int = 0
    base_model_name: str = ""
    base_model_hash: str = ""
    resolution: int | None = 1024
    pack_version: str | None = None
    author: str = ""  # modelspec.author; the training layer fills it from a setting (UNZIPLORA_AUTHOR)
    tags: Sequence[str] = ()  # extra modelspec.tags beyond the pack's own
    training_started_at: float | None = None  # unix time, as kohya writes ss_training_started_at
    images: int = 1  # how many training images (ss_dataset_dirs' img_count)
    dataset_name: str = ""  # ss_dataset_dirs' key; default: the run's name
    thumbnails: dict = field(default_factory=dict)  # {"content"|"style"|"bundle": data URI}: modelspec.thumbnail
    prediction: str = ""  # what the base model predicts: "eps" | "v" ("" = not known, e.g. an older caller)
    zero_terminal_snr: bool = False  # the base model's schedule ends at zero SNR (v-pred models such as NoobAI-v)

    def trigger(self, role: str) -> str:
        if role == "content":
            return self.content_trigger or self.content_prompt
        return self.style_trigger or self.style_prompt


def pack_version() -> str:
    """The version in the pack's pyproject.toml (the Comfy Registry's source of truth)."""
    try:
        with open(os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "pyproject.toml"),
                  encoding="utf-8") as f:
            m = re.search(r'^version\s*=\s*"([^"]+)"', f.read(), re.M)
        return m.group(1) if m else "unknown"
    except OSError:
        return "unknown"


def _common_metadata(info: RunInfo) -> dict[str, str]:
    return {
        "unziplora.format_version": FORMAT_VERSION,
        "unziplora.prompt": info.prompt,
        "unziplora.content_prompt": info.content_prompt,
        "unziplora.style_prompt": info.style_prompt,
        "unziplora.content_trigger": info.trigger("content"),
        "unziplora.style_trigger": info.trigger("style"),
        "unziplora.mode": info.mode,
        "unziplora.hyperparameters": json.dumps(info.hyperparameters, sort_keys=True, default=str),
        "unziplora.steps": str(int(info.steps_done)),
        "unziplora.base_model": info.base_model_name,
        "unziplora.base_model_hash": info.base_model_hash,
        "unziplora.pack_version": info.pack_version or pack_version(),
        **prediction_metadata(info),
    }


def lora_metadata(role: str, info: RunInfo, *, rank: int, title: str | None = None, partner_file: str = "",
                  bundle_file: str = "", output_name: str | None = None) -> dict[str, str]:
    """safetensors metadata for one LoRA: SAI model spec + kohya ss_* (what A1111/Forge/Civitai read) + unziplora.*

    output_name: the file's stem ("cat_content"); kohya writes it as ss_output_name and A1111 uses it as the
    LoRA's alias in <lora:alias:1>, so it must be a name that file lists match.
    """
    if role not in SIDES:
        raise ValueError(f"role must be 'content' or 'style', got {role!r}")
    trigger = info.trigger(role)
    prompt = info.content_prompt if role == "content" else info.style_prompt
    use = ("the subject in new styles and scenes" if role == "content" else "the style on new subjects")
    meta = {
        "modelspec.sai_model_spec": "1.0.0",
        "modelspec.architecture": ARCHITECTURE,
        # LDM key names are the ones of Stability's reference implementation (what kohya writes for SDXL too)
        "modelspec.implementation": "https://github.com/Stability-AI/generative-models",
        "modelspec.title": title or f"UnZipLoRA {role}",
        "modelspec.description": f"UnZipLoRA {role} LoRA: use alone at strength 1 for {use}, e.g. '{prompt}'.",
        "modelspec.date": datetime.date.today().isoformat(),
        "modelspec.trigger_phrase": trigger,
        "ss_network_dim": str(int(rank)),
        "ss_network_alpha": str(int(rank)),
        "ss_network_module": "networks.lora",
        "ss_base_model_version": BASE_MODEL_VERSION,
        "ss_sd_model_name": info.base_model_name,
        "ss_steps": str(int(info.steps_done)),
        "ss_output_name": output_name or title or f"UnZipLoRA {role}",
        "ss_training_comment": f"UnZipLoRA ({info.mode}) {role} LoRA; trained with '{info.prompt}'",
        # kohya's tag table: A1111's LoRA card shows these as the training tags
        "ss_tag_frequency": json.dumps({"unziplora": {trigger: 1}}),
        # comma-separated, as ComfyUI's model library and kohya write them
        "modelspec.tags": ", ".join(dict.fromkeys(["unziplora", role, info.mode, "sdxl", "lora", *info.tags])),
        "modelspec.usage_hint": usage_hint(role, info),
        "unziplora.role": role,
        "unziplora.partner_lora": partner_file,
        "unziplora.bundle": bundle_file,
    }
    if info.resolution:
        meta["modelspec.resolution"] = f"{int(info.resolution)}x{int(info.resolution)}"
    if info.thumbnails.get(role):
        meta["modelspec.thumbnail"] = info.thumbnails[role]
    meta.update(describe_run(info))
    meta.update(_common_metadata(info))
    return meta


def bundle_tensors(mergers: Mapping | None = None, masks: Mapping | None = None) -> dict[str, torch.Tensor]:
    """{side: {ldm path: vector}} mergers (fp32) and masks (bool) -> "<side>.<path>.merger" / ".mask" keys."""
    out: dict[str, torch.Tensor] = {}
    for kind, table, dtype in (("merger", mergers, torch.float32), ("mask", masks, torch.bool)):
        for side, per_path in (table or {}).items():
            if side not in SIDES:
                raise ValueError(f"{kind}s: side must be 'content' or 'style', got {side!r}")
            for path, t in per_path.items():
                t = t.detach().flatten()
                out[f"{side}.{path}.{kind}"] = _cpu_copy(t != 0 if dtype is torch.bool else t, dtype)
    return out


def bundle_metadata(info: RunInfo, *, content_file: str, style_file: str, rank: int) -> dict[str, str]:
    meta = {
        "unziplora.kind": "bundle",
        "unziplora.content_lora": os.path.basename(content_file),
        "unziplora.style_lora": os.path.basename(style_file),
        "unziplora.rank": str(int(rank)),
    }
    if info.thumbnails.get("bundle"):
        meta["modelspec.thumbnail"] = info.thumbnails["bundle"]
    if info.author:
        meta["modelspec.author"] = info.author
    meta.update(_common_metadata(info))
    return meta


@dataclass
class Bundle:
    mergers: dict  # {side: {ldm path: float tensor [out]}}
    masks: dict  # {side: {ldm path: bool tensor [out]}}
    metadata: dict
    source: str = ""


def read_bundle(path: str) -> Bundle:
    tensors, metadata = load_tensors(path)
    if metadata.get("unziplora.kind") != "bundle":
        raise ValueError(f"{os.path.basename(path)}: not an UnZipLoRA bundle (no 'unziplora.kind = bundle' metadata)")
    mergers: dict = {}
    masks: dict = {}
    for key, t in tensors.items():
        side, _, rest = key.partition(".")
        path_, _, kind = rest.rpartition(".")
        target = {"merger": mergers, "mask": masks}.get(kind)
        if side not in SIDES or target is None or not path_:
            raise ValueError(f"{os.path.basename(path)}: unexpected key {key!r} in bundle")
        target.setdefault(side, {})[path_] = t
    return Bundle(mergers, masks, metadata, path)


# ---------------------------------------------------------------------------------------------------- writing


def sanitize_name(name: str) -> str:
    """A file-name stem from user input: no folders, no leading dots (hidden/relative), bounded length."""
    stem = re.sub(r'[\\/:*?"<>|\x00-\x1f]+', "_", str(name)).strip().lstrip(".").strip()
    return stem[:120] or "unziplora"


def unique_name(directory: str, name: str, suffixes: Sequence[str] = ALL_SUFFIXES,
                also: Sequence[tuple[str, str]] = (), reserved: Collection[str] = ()) -> str:
    """name, or name_2, name_3, ... : the first stem for which no NAME+suffix file exists yet in `directory`,
    nor NAME+suffix in any (folder, suffix) of `also`, and that is not in `reserved` (names promised to
    queued jobs)."""
    stem = sanitize_name(name)

    def taken(c: str) -> bool:
        return (c in reserved or any(os.path.lexists(os.path.join(directory, c + s)) for s in suffixes)
                or any(os.path.lexists(os.path.join(d, c + s)) for d, s in also))

    candidate, n = stem, 1
    while taken(candidate):
        n += 1
        candidate = f"{stem}_{n}"
    return candidate


def temp_path(final_path: str) -> str:
    directory, base = os.path.split(final_path)
    return os.path.join(directory, f".{base}.{uuid.uuid4().hex[:8]}{TEMP_EXT}")


def _save_safetensors(tensors: dict, path: str, metadata: dict) -> None:
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)
    with open(path, "rb+") as f:  # data on disk before the rename makes it visible
        os.fsync(f.fileno())


def _rename(src: str, dst: str) -> None:
    os.replace(src, dst)


def _fsync_dir(directory: str) -> None:
    if os.name == "nt":
        return  # directories cannot be opened for fsync on Windows; NTFS journals the rename
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems (network, FUSE) refuse directory fsync; the rename is still atomic
    finally:
        os.close(fd)


def _check_metadata(metadata: Mapping, name: str) -> dict[str, str]:
    bad = [k for k, v in metadata.items() if not isinstance(k, str) or not isinstance(v, str)]
    if bad:
        raise TypeError(f"{name}: safetensors metadata must be str -> str; offending keys: {bad[:5]}")
    return dict(metadata)


def write_file_set(directory: str | None, files: Sequence[tuple[str, dict, Mapping]]) -> list[str]:
    """Write (name, tensors, metadata) files so that all appear or none does.

    A name is a basename inside `directory`, or a full path when directory is None (files may then sit in
    different folders, e.g. LoRAs in models/loras/unziplora and the bundle in models/unziplora). Every file goes
    to a hidden temp in its own folder first (same file system, so the rename is atomic), is fsynced, and only
    then are all renamed; on any failure the temps and any file already renamed by this call are removed.
    Refuses to replace an existing file (FileExistsError) rather than overwrite it.
    """
    finals = [name if directory is None else os.path.join(directory, name) for name, _, _ in files]
    for folder in {os.path.dirname(f) for f in finals}:
        os.makedirs(folder or ".", exist_ok=True)
    temps: list[str] = []
    renamed: list[str] = []
    try:
        for final, (base, tensors, metadata) in zip(finals, files):
            tmp = temp_path(final)
            temps.append(tmp)
            _save_safetensors(tensors, tmp, _check_metadata(metadata, os.path.basename(base)))
        with _LOCK:
            taken = [f for f in finals if os.path.lexists(f)]
            if taken:
                raise FileExistsError(f"refusing to overwrite {taken[0]}")
            for tmp, final in zip(temps, finals):
                _rename(tmp, final)
                renamed.append(final)
        for folder in {os.path.dirname(f) for f in finals}:
            _fsync_dir(folder or ".")
    except BaseException:
        for path in temps + renamed:
            try:
                os.remove(path)
            except FileNotFoundError:
                pass
        raise
    return finals


@dataclass
class SavedFiles:
    name: str
    content: str
    style: str
    bundle: str


def pair_paths(directory: str, stem: str, bundle_directory: str) -> tuple[str, str, str]:
    """(content, style, bundle) paths of the pair named `stem`: the one place a pair's file names are made."""
    return (os.path.join(directory, stem + CONTENT_SUFFIX), os.path.join(directory, stem + STYLE_SUFFIX),
            os.path.join(bundle_directory, stem + BUNDLE_SUFFIX))


def save_unziplora(directory: str, name: str, content: Mapping, style: Mapping, info: RunInfo, *,
                   bundle_directory: str, mergers: Mapping | None = None, masks: Mapping | None = None,
                   dtype: torch.dtype = torch.float16, exact: bool = False) -> SavedFiles:
    """Write NAME_content / NAME_style LoRAs in `directory` and the bundle NAME.safetensors in `bundle_directory`
    under the first NAME free in both folders.

    content/style: {ldm path: (down, up)} with the hard mask already baked into up; mergers/masks: {side: {ldm
    path: vector [out]}}. Returns the final paths.
    exact: `name` was already chosen (and reserved) by the caller: write exactly it, and refuse (FileExistsError)
    rather than pick another name when a file under it appeared meanwhile.
    """
    ranks = {int(_factor_triplet(v)[0].shape[0]) for v in list(content.values()) + list(style.values())}
    rank = max(ranks) if ranks else 0
    content_sd, style_sd = lora_to_kohya(content, dtype), lora_to_kohya(style, dtype)
    extra = bundle_tensors(mergers, masks)
    with _LOCK:
        stem = name if exact else unique_name(directory, name, also=[(bundle_directory, BUNDLE_SUFFIX)])
        info = replace(info, dataset_name=info.dataset_name or stem)
        c_path, s_path, b_path = pair_paths(directory, stem, bundle_directory)
        c_file, s_file, b_file = (os.path.basename(p) for p in (c_path, s_path, b_path))
        files = [
            (c_path, content_sd,
             lora_metadata("content", info, rank=rank, title=f"{stem} content", partner_file=s_file, bundle_file=b_file,
                           output_name=os.path.splitext(c_file)[0])),
            (s_path, style_sd,
             lora_metadata("style", info, rank=rank, title=f"{stem} style", partner_file=c_file, bundle_file=b_file,
                           output_name=os.path.splitext(s_file)[0])),
            # last: a bundle on disk implies both LoRAs are there, even after a crash mid-rename
            (b_path, extra,
             bundle_metadata(info, content_file=c_file, style_file=s_file, rank=rank)),
        ]
        paths = write_file_set(None, files)
    return SavedFiles(stem, *paths)
