"""Which files of a folder are images, each image's prompts (its kohya caption `<stem>.txt` when present) and
its job name. Plain Python with no imports from the pack: farm/ loads this file on its own (without torch)."""

from __future__ import annotations

import os
import re
import uuid

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
CAPTION_KEYS = ("content", "style", "combined")
BATCH_ID_RE = re.compile(r"\A[0-9a-f]{12}\Z")
_STEM_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def new_batch_id() -> str:
    return uuid.uuid4().hex[:12]


def valid_batch_id(value) -> bool:
    return isinstance(value, str) and bool(BATCH_ID_RE.match(value))


def list_images(folder: str) -> list[str]:
    """The image files directly in `folder`, sorted by name (hidden files and sub-folders are not read)."""
    names = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith(".") or not os.path.isfile(path):
            continue
        if entry.lower().endswith(IMAGE_EXTENSIONS):
            names.append(entry)
    return names


def job_name(name: str, file_name: str) -> str:
    """`<name>_<file stem>`, with characters a file name may not carry replaced by '_' (at most 80 in all)."""
    stem = _STEM_SAFE.sub("_", os.path.splitext(file_name)[0]).strip("._") or "image"
    out = f"{name}_{stem}"[:80].rstrip(".")
    return out


def trigger_of(content_prompt: str, style_prompt: str) -> str:
    """The content prompt's rare token: its first word that the style prompt lacks ('A sks cat' / 'A cat in
    sketch style' -> 'sks'); '' when there is none."""
    style_words = {w.lower().strip(".,") for w in style_prompt.split()}
    for word in content_prompt.split():
        w = word.strip(".,")
        if w and w.lower() not in style_words and w.lower() not in ("a", "an", "the", "photo", "of"):
            return w
    return ""


def read_caption(image_path: str) -> str | None:
    """The text of `<stem>.txt` beside the image (kohya's convention), or None when there is none."""
    path = os.path.splitext(image_path)[0] + ".txt"
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read(64 * 1024).strip()


def prompts_for(caption: str | None, content_prompt: str, style_prompt: str, combined_prompt: str = "") -> dict:
    """The three prompts of one image.

    No caption (or an empty one): the node's prompts, unchanged (its trigger with them). A caption with
    `content:` / `style:` / `combined:` lines: those lines, the node's prompts for any line left out. Any other
    caption describes the image's subject (kohya style, e.g. 'a red sneaker'): content = '<article> <trigger>
    <subject>' (the trigger is kept, and not doubled if the caption has it), style = '<subject> in <the node's
    style>' when the node's style prompt reads '... in <style>', else '<subject>, <style prompt>'.
    """
    out = {"content": content_prompt.strip(), "style": style_prompt.strip(), "combined": combined_prompt.strip()}
    if not caption or not caption.strip():
        return out
    keyed = {}
    for line in caption.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in CAPTION_KEYS and value.strip():
            keyed[key.strip().lower()] = value.strip()
    if keyed:
        out.update(keyed)
        if "content" in keyed or "style" in keyed:
            out["combined"] = keyed.get("combined", "")  # rebuilt from the image's own prompts
        return out
    subject = " ".join(caption.split()).strip(" .,")
    trigger = trigger_of(content_prompt, style_prompt)
    bare = re.sub(r"^(a|an|the)\s+", "", subject, flags=re.IGNORECASE)
    has_trigger = trigger and trigger.lower() in {w.lower().strip(".,") for w in subject.split()}
    out["content"] = subject if has_trigger or not trigger else f"A {trigger} {bare}"
    plain = " ".join(w for w in subject.split() if not trigger or w.strip(".,").lower() != trigger.lower())
    idx = style_prompt.lower().rfind(" in ")
    out["style"] = f"{plain}{style_prompt[idx:].rstrip()}" if idx > 0 else f"{plain}, {style_prompt.strip()}"
    out["combined"] = ""
    return out
