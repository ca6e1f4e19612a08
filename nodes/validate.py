"""Input checks shared by the pack's nodes: combo values, names that become files, errors while loading files.

ComfyUI 0.3.75 does not check the value of a V3 node's combo against its options when a prompt is queued (the
check in execution.validate_inputs only sees V1-style list types), so an API client can send any string: every
node calls check_choices first, and the options come from the node's own schema, so they never drift apart.
"""

from __future__ import annotations

import contextlib
import re

from comfy_api.latest import io

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# Windows refuses these as a file's name before the first dot, whatever the case or extension (CON.txt, nul)
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", *(f"COM{i}" for i in range(10)),
                    *(f"LPT{i}" for i in range(10))}


def _shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_choices(node_cls, values: dict) -> None:
    """ValueError naming the first combo input whose value is not one of its options."""
    for inp in node_cls.define_schema().inputs:
        if not isinstance(inp, io.Combo.Input) or inp.id not in values:
            continue
        value, options = values[inp.id], list(inp.options or [])
        if value is None and inp.optional:
            continue
        if value not in options:
            if len(options) > 12:
                allowed = f"one of the {len(options)} entries of its list (refresh the list if a file is new)"
            elif options:
                allowed = "one of " + ", ".join(str(o) for o in options)
            else:
                allowed = "its list is empty: put a file in the folder it lists and refresh"
            raise ValueError(f"{inp.id} = {_shown(value)} is not allowed: {allowed}")


def check_name(name) -> str:
    """The run's name as typed, if it can be a file-name stem on every system; ValueError naming `name`."""
    if not isinstance(name, str):
        raise ValueError(f"name = {_shown(name)} is not allowed: text")
    name = name.strip()
    if not NAME_RE.match(name):
        raise ValueError(f"name = {_shown(name)} is not allowed: 1-80 letters, digits, '_', '-' or '.', starting with "
                         "a letter or digit (it becomes the file names)")
    if name.endswith("."):
        raise ValueError(f"name = {_shown(name)} is not allowed: it may not end with '.' (Windows drops it)")
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        raise ValueError(f"name = {_shown(name)} is not allowed: {name.split('.')[0]} is a reserved device name on "
                         "Windows (CON, PRN, AUX, NUL, COM0-9, LPT0-9), whatever the case or extension")
    return name


def _normal(text: str) -> str:
    return " ".join(str(text).lower().split()).strip(" .,;")


def check_prompts(content_prompt, style_prompt, prompt_separation: bool) -> None:
    for label, text in (("content_prompt", content_prompt), ("style_prompt", style_prompt)):
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"{label} is empty: describe the {label.split('_')[0]}, e.g. "
                             + ("'A sks cat'" if label == "content_prompt" else "'A cat in sketch style'"))
    if prompt_separation and _normal(content_prompt) == _normal(style_prompt):
        raise ValueError("content_prompt and style_prompt are the same text: prompt separation needs two different "
                         "prompts (content: the subject with its rare token, 'A sks cat'; style: the style on a plain "
                         "subject, 'A cat in sketch style')")


@contextlib.contextmanager
def loading(input_name: str, value: str, display=None):
    """Errors while loading the file an input names: the input and the file as picked, no server paths."""
    try:
        yield
    except (ValueError, OSError, RuntimeError, KeyError) as e:
        if isinstance(e, FileNotFoundError) and e.filename:
            reason = f"file not found ({e.filename if display is None else display.path(e.filename)})"
        else:
            reason = str(e).strip() or type(e).__name__
        if display is not None:
            reason = display.text(reason)
        raise ValueError(f"{input_name} = {_shown(value)}: {reason}") from None
