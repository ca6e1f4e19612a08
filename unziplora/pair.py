"""A content + style LoRA pair read from files: what the loader nodes hand to Apply and Prompts.

Each side is an ordinary LoRA ({LDM path: LoRAWeights}, any format lora_formats reads) plus the per-column
mergers that belong to it (a missing merger means all ones: a plain LoRA's case) and the masks, which the files
already bake into `up` and which are kept for information only. Sides are independent on purpose: crossing image
A's content with image B's style takes A.content and B.style, each with its own mergers.

Builders: a trained bundle (+ its two LoRA files), any two LoRA files (+ merger files if found), the official
UnZipLoRA script's output (NAME_content/, NAME_style/, NAME_merger_*.pth) and a B-LoRA file (split by block).
Nothing here touches a model; unziplora.apply does.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .lora_files import Bundle, read_bundle
from .lora_formats import LoRAState, read_lora, read_official_mergers, split_blora, validate_against
from .model_card import describe_prediction
from .roles import MODES

SIDES = ("content", "style")
OFFICIAL_LORA_FILE = "pytorch_lora_weights.safetensors"


@dataclass
class PairSide:
    role: str  # "content" | "style"
    weights: LoRAState  # {ldm path: LoRAWeights}
    mergers: dict = field(default_factory=dict)  # {ldm path: float vector [out]}; missing = ones
    masks: dict = field(default_factory=dict)  # {ldm path: bool vector [out]}; informational (baked into up)
    merger_source: str = ""  # the file the mergers came from, for errors
    separated: bool = False  # trained with its own prompt in cross-attention K/V (prompt separation)
    prompt: str = ""  # the prompt it was trained with, if known
    trigger: str = ""

    @property
    def source(self) -> str:
        return self.weights.source

    def validate(self, shapes: Mapping[str, tuple[int, int]]) -> None:
        """ValueError naming the file if a layer or a merger does not fit the model's {path: (in, out)}."""
        validate_against(self.weights, shapes, self.source)
        for path, merger in self.mergers.items():
            if path in self.weights and merger.numel() != shapes[path][1]:
                raise ValueError(f"{os.path.basename(self.merger_source or self.source)}: the {self.role} merger of "
                                 f"{path} has {merger.numel()} entries; the layer has {shapes[path][1]} output channels")

    def column_scale(self, path: str, strength: float = 1.0) -> torch.Tensor:
        """strength x alpha/rank x merger, per output channel: what multiplies B A x on this layer."""
        w = self.weights[path]
        merger = self.mergers.get(path)
        scale = torch.full((w.out_features,), float(strength) * w.scale, dtype=torch.float32)
        return scale if merger is None else scale * merger.detach().float().flatten()


@dataclass
class ContentStyleHandle:
    """The UNZIPLORA_PAIR value: one or both sides plus the prompts that go with them."""

    name: str
    content: PairSide | None = None
    style: PairSide | None = None
    prompt: str = ""  # the combined prompt of the run, if both sides come from one run
    kind: str = ""  # "bundle" | "files" | "official" | "blora"
    metadata: dict = field(default_factory=dict)

    def side(self, role: str) -> PairSide:
        if role not in SIDES:
            raise ValueError(f"role must be 'content' or 'style', got {role!r}")
        side = getattr(self, role)
        if side is None or not side.weights:
            raise ValueError(f"UnZipLoRA: {self.name} has no {role} LoRA")
        return side

    def text(self, role: str, what: str = "prompt") -> str:
        side = getattr(self, role)
        return "" if side is None else getattr(side, what)

    @property
    def prediction(self) -> str:
        """What the base model the pair was trained on predicts, from the files' metadata: 'v-prediction, zero
        terminal SNR', 'epsilon (noise) prediction', 'content: ...; style: ...' when the two differ, '' unknown."""
        if self.metadata and describe_prediction(self.metadata):
            return describe_prediction(self.metadata)
        said = {r: describe_prediction(getattr(self, r).weights.metadata) for r in SIDES if getattr(self, r)}
        known = {r: d for r, d in said.items() if d}
        if not known:
            return ""
        if len(set(known.values())) == 1 and len(known) == len(said):
            return next(iter(known.values()))
        return "; ".join(f"{r}: {said[r] or 'not said'}" for r in said)

    def summary(self) -> str:
        parts = []
        for role in SIDES:
            side = getattr(self, role)
            if side is not None:
                merged = f", mergers from {os.path.basename(side.merger_source)}" if side.mergers else ""
                parts.append(f"{role}: {os.path.basename(side.source)} ({len(side.weights)} layers{merged})")
        said = f" ({self.prediction})" if self.prediction else ""
        return f"{self.name} [{self.kind}]{said} " + "; ".join(parts)


# ---------------------------------------------------------------------------------------------------- helpers


def _stem(path: str) -> str:
    return os.path.splitext(os.path.basename(os.path.normpath(path)))[0]


def _separated_mode(metadata: Mapping) -> bool | None:
    mode = metadata.get("unziplora.mode")
    return MODES[mode].prompt_separation if mode in MODES else None


def find_named_file(basename: str, folders: Iterable[str], what: str, owner: str) -> str:
    """The first folders[i]/basename that exists; FileNotFoundError naming both files and the folders searched."""
    base = os.path.basename(basename or "")
    if not base:
        raise ValueError(f"{os.path.basename(owner)}: names no {what}")
    folders = list(dict.fromkeys(os.path.abspath(f) for f in folders if f))
    for folder in folders:
        candidate = os.path.join(folder, base)
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{os.path.basename(owner)}: its {what} {base!r} was not found in "
                            + ", ".join(folders or ["(no folder)"]) + ". Move it back next to the other files.")


def lora_folders(bundle_path: str, lora_roots: Iterable[str] = ()) -> list[str]:
    """Where a bundle's LoRAs may be: next to it, then <loras>/unziplora (where training writes), then <loras>."""
    out = [os.path.dirname(os.path.abspath(bundle_path))]
    for root in lora_roots:
        out += [os.path.join(root, "unziplora"), root]
    return out


# ---------------------------------------------------------------------------------------------------- builders


def from_bundle(path: str, lora_roots: Iterable[str] = (), *, read_kwargs: Mapping | None = None) -> ContentStyleHandle:
    """A trained run: the bundle (mergers, masks, prompts) and the two LoRA files it names."""
    bundle: Bundle = read_bundle(path)
    meta = bundle.metadata
    separated = _separated_mode(meta)
    folders = lora_folders(path, lora_roots)
    handle = ContentStyleHandle(_stem(path), prompt=meta.get("unziplora.prompt", ""), kind="bundle", metadata=meta)
    for role in SIDES:
        file = find_named_file(meta.get(f"unziplora.{role}_lora", ""), folders, f"{role} LoRA", path)
        side = PairSide(role, read_lora(file, **dict(read_kwargs or {})), dict(bundle.mergers.get(role, {})),
                        dict(bundle.masks.get(role, {})), merger_source=path,
                        separated=True if separated is None else separated,
                        prompt=meta.get(f"unziplora.{role}_prompt", ""), trigger=meta.get(f"unziplora.{role}_trigger", ""))
        setattr(handle, role, side)
    return handle


def read_mergers(path: str, role: str) -> dict:
    """{ldm path: vector} of one side from a bundle or an official merger file (torch.load weights_only)."""
    if _header_metadata(path).get("unziplora.kind") == "bundle":
        mergers = read_bundle(path).mergers.get(role)
    else:
        mergers = read_official_mergers(path).get(role)
    if not mergers:
        raise ValueError(f"{os.path.basename(path)}: holds no {role} mergers")
    return dict(mergers)


def _header_metadata(path: str) -> dict:
    """A safetensors file's metadata, reading only its header (LoRA files can be hundreds of MB)."""
    from safetensors import safe_open

    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            return dict(f.metadata() or {})
    except Exception:  # noqa: BLE001 - not safetensors (a .pt LoRA): no metadata to follow
        return {}


_RUN_KEYS = ("unziplora.prompt", "unziplora.content_prompt", "unziplora.style_prompt", "unziplora.mode",
             "unziplora.hyperparameters", "unziplora.steps", "unziplora.base_model_hash")


def _same_run(a: Mapping, b: Mapping) -> bool:
    """Files written by one save_unziplora call share these metadata values."""
    return all(a.get(k) == b.get(k) for k in _RUN_KEYS)


def find_mergers(lora_path: str, role: str, bundle_folders: Iterable[str] = ()) -> str | None:
    """The merger file that belongs to a LoRA file, if there is one.

    Ours: the bundle the LoRA's metadata names (in bundle_folders or next to it). The official script's:
    NAME_merger_<role>.pth next to NAME_<role>/ (its LoRA folder) or NAME_<role>.safetensors.
    """
    folder = os.path.dirname(os.path.abspath(lora_path))
    meta = _header_metadata(lora_path)
    bundle = os.path.basename(meta.get("unziplora.bundle", ""))
    if bundle:
        for f in [*bundle_folders, folder]:
            candidate = os.path.join(f, bundle)
            # same run: a later run may have taken the name after this one's bundle was deleted
            if os.path.isfile(candidate) and _same_run(meta, _header_metadata(candidate)):
                return candidate
    for stem_path in (folder, os.path.splitext(os.path.abspath(lora_path))[0]):
        if stem_path.endswith("_" + role):
            candidate = stem_path[: -len(role) - 1] + f"_merger_{role}.pth"
            if os.path.isfile(candidate):
                return candidate
    return None


def _side_from_file(role: str, source, mergers: str | None, read_kwargs: Mapping | None) -> PairSide:
    state = read_lora(source, **dict(read_kwargs or {}))
    meta = state.metadata
    separated = _separated_mode(meta)
    if separated is None:
        separated = "unziplora-official" in state.format
    side = PairSide(role, state, separated=separated, prompt=meta.get(f"unziplora.{role}_prompt", ""),
                    trigger=meta.get(f"unziplora.{role}_trigger", meta.get("modelspec.trigger_phrase", "")))
    if mergers:
        side.mergers, side.merger_source = read_mergers(mergers, role), mergers
    return side


def from_files(content, style, *, content_mergers: str | None = None, style_mergers: str | None = None,
               name: str | None = None, read_kwargs: Mapping | None = None) -> ContentStyleHandle:
    """Any two LoRA files (kohya, diffusers/PEFT, ComfyUI, official UnZipLoRA) as content and style.

    Without merger files the mergers are all ones: each side is exactly the LoRA in its file.
    """
    c = _side_from_file("content", content, content_mergers, read_kwargs)
    s = _side_from_file("style", style, style_mergers, read_kwargs)
    same_run = c.weights.metadata.get("unziplora.prompt") == s.weights.metadata.get("unziplora.prompt")
    prompt = c.weights.metadata.get("unziplora.prompt", "") if same_run else ""
    name = name or f"{_stem(c.source)} + {_stem(s.source)}"
    return ContentStyleHandle(name, c, s, prompt=prompt, kind="files")


def _official_part(prefix: str, role: str) -> str:
    for candidate in (os.path.join(prefix + f"_{role}", OFFICIAL_LORA_FILE), prefix + f"_{role}.safetensors",
                      prefix + f"_{role}"):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"{os.path.basename(prefix)}: official UnZipLoRA output has no {role} LoRA "
                            f"({os.path.basename(prefix)}_{role}/{OFFICIAL_LORA_FILE})")


def from_official(prefix: str, *, read_kwargs: Mapping | None = None) -> ContentStyleHandle:
    """The official script's output for --output_dir PREFIX: PREFIX_content/ and PREFIX_style/ (diffusers LoRA
    folders) and PREFIX_merger_content.pth / PREFIX_merger_style.pth (mergers; absent = all ones).

    PREFIX may also be given as one of its parts (the _content folder or a merger file).
    """
    prefix = os.path.normpath(prefix)
    for suffix in ("_content", "_style", "_merger_content.pth", "_merger_style.pth"):
        if prefix.endswith(suffix):
            prefix = prefix[: -len(suffix)]
            break
    mergers = {r: prefix + f"_merger_{r}.pth" for r in SIDES}
    handle = from_files(_official_part(prefix, "content"), _official_part(prefix, "style"),
                        content_mergers=mergers["content"] if os.path.isfile(mergers["content"]) else None,
                        style_mergers=mergers["style"] if os.path.isfile(mergers["style"]) else None,
                        name=os.path.basename(prefix), read_kwargs=read_kwargs)
    handle.kind = "official"
    for side in (handle.content, handle.style):
        side.separated = True  # the official method always trains with prompt separation
    return handle


def from_blora(source, *, read_kwargs: Mapping | None = None) -> ContentStyleHandle:
    """A B-LoRA: one LoRA whose output_blocks.0.1 part is the content and output_blocks.1.1 part the style."""
    content, style = split_blora(source, **dict(read_kwargs or {}))
    name = _stem(content.source)
    return ContentStyleHandle(name, PairSide("content", content) if content else None,
                              PairSide("style", style) if style else None, kind="blora", metadata=content.metadata)
