"""Input checks shared by the pack's nodes: combo values, text lengths, typed values where a link belongs, names
that become files, errors while loading files.

Every node checks its inputs the same way, twice, with one function (`problem`) reading the node's own schema:
- at queue time, in the node's V3 `validate_inputs` (`queue_check`): ComfyUI calls it when a prompt is queued,
  with the typed values (a linked input arrives as None), so a bad combo value, an over-long prompt or a typed
  value where a link belongs is refused by /prompt, before any model loads. ComfyUI 0.3.75 does not check a V3
  combo's value itself (only V1-style list types); 0.33.0 does, except for the inputs a validate_inputs takes.
  Both hosts list the message once per input validate_inputs takes (their loop adds one entry per input), so
  each node's validate_inputs takes only the inputs that need this check.
- at run time, first thing in execute (`check_inputs`): values that come through links (a prompt built by
  another node) are only known then, and direct callers (scripts, tests) skip validate_inputs.
"""

from __future__ import annotations

import contextlib
import functools
import re

from comfy_api.latest import io

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,79}$")
# Windows refuses these as a file's name before the first dot, whatever the case or extension (CON.txt, nul)
WINDOWS_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", *(f"COM{i}" for i in range(10)),
                    *(f"LPT{i}" for i in range(10))}


def shown(value) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# Text an input may hold, in characters. Prompts: CLIP reads 77-token chunks (75 words' pieces each); every chunk
# is one more pass of both SDXL text encoders per prompt and 77 more keys in every cross-attention of every
# training step and every sampling step. 2,000 characters is about 400-500 tokens of English (6-7 chunks), far
# past any LoRA prompt (the paper's are under 12 words), while a 100,000-character prompt held the queue thread
# for over 5 minutes in CLIP, where Interrupt cannot reach. The token count itself is bounded after tokenizing
# (training.data.MAX_PROMPT_CHUNKS): text of punctuation makes a token per character.
MAX_PROMPT_CHARS = 2000
MAX_LABELS_CHARS = 1000  # Score's row names: 64 rows of 15 characters
TEXT_LIMITS = {"prompt": MAX_PROMPT_CHARS, "content_prompt": MAX_PROMPT_CHARS, "style_prompt": MAX_PROMPT_CHARS,
               "combined_prompt": MAX_PROMPT_CHARS, "negative_prompt": MAX_PROMPT_CHARS, "labels": MAX_LABELS_CHARS,
               "name": 200}
TEXT_WHY = {"labels": "short row names, comma-separated",
            "name": "a file name stem of at most 80 characters"}
_WIDGETS = (io.Combo.Input, io.String.Input, io.Int.Input, io.Float.Input, io.Boolean.Input)


def _type_name(inp) -> str:
    return str(getattr(inp, "io_type", None) or inp.get_io_type())


def _combo_problem(inp, value, at_queue: bool) -> str | None:
    options = list(inp.options or [])
    if value is None and (inp.optional or at_queue) or value in options:  # None at queue time: linked
        return None
    if len(options) > 12:
        allowed = f"one of the {len(options)} entries of its list (refresh the list if a file is new)"
    elif options:
        allowed = "one of " + ", ".join(str(o) for o in options)
    else:
        allowed = "its list is empty: put a file in the folder it lists and refresh"
    return f"{inp.id} = {shown(value)} is not allowed: {allowed}"


def _text_problem(inp, value) -> str | None:
    if value is None:  # linked (at queue time) or an optional input left empty
        return None
    if not isinstance(value, str):
        return f"{inp.id} = {shown(value)} is not allowed: text"
    limit = TEXT_LIMITS.get(inp.id)
    if limit is not None and len(value) > limit:
        why = TEXT_WHY.get(inp.id, "a prompt; CLIP reads it in 77-token chunks, and longer text stalls the "
                                   "queue while it is encoded")
        return (f"{inp.id} is {len(value):,} characters long: at most {limit:,} are allowed ({why})")
    return None


def _range_problem(inp, value) -> str | None:
    """The schema's min / max (ComfyUI skips its own check for an input validate_inputs takes). Non-numbers and
    NaN are left to the node's own checks, which say what kind of number belongs there."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    low, high = getattr(inp, "min", None), getattr(inp, "max", None)
    if (low is not None and value < low) or (high is not None and value > high):
        return f"{inp.id} = {shown(value)} is not allowed: from {low} to {high}"
    return None


def problem(node_cls, values: dict, at_queue: bool = False) -> str | None:
    """The first bad input among `values` (input id -> value), in the node's schema order, as one message naming
    the input as the node shows it; None when all are fine. Checks: combo values against their options, numbers
    against the schema's min / max, text type and length, and (at queue time) that an input which only takes a link was not given a typed value."""
    for inp in node_cls.define_schema().inputs:
        if inp.id not in values:
            continue
        value = values[inp.id]
        if isinstance(inp, io.Combo.Input):
            found = _combo_problem(inp, value, at_queue)
        elif isinstance(inp, io.String.Input):
            found = _text_problem(inp, value)
        elif isinstance(inp, (io.Int.Input, io.Float.Input)):
            found = _range_problem(inp, value)
        elif not isinstance(inp, _WIDGETS) and at_queue and value is not None:
            # a link arrives as None at queue time; anything else was typed into the API JSON
            found = (f"{inp.id} = {shown(value)} is not allowed: connect it to a node's {_type_name(inp)} output "
                     "(it takes no typed value)")
        else:
            found = None
        if found:
            return found
    return None


def queue_check(node_cls, values: dict):
    """What a node's validate_inputs returns: True, or the message ComfyUI shows for the refused prompt."""
    values = {k: v for k, v in values.items() if k != "cls"}
    return problem(node_cls, values, at_queue=True) or True


def check_inputs(node_cls, values: dict) -> None:
    """ValueError naming the first bad input (run time: the same checks as at queue time, on the real values)."""
    found = problem(node_cls, values)
    if found:
        raise ValueError(found)




def check_pair(input_name: str, value, optional: bool = False) -> None:
    """A UNZIPLORA_PAIR input holds a loader's pair (a custom node or an API client can hand anything)."""
    from ..unziplora.pair import ContentStyleHandle

    if value is None and optional:
        return
    if not isinstance(value, ContentStyleHandle):
        raise ValueError(f"{input_name} = {shown(value)} is not allowed: connect it to the pair output of UnZipLoRA "
                         "Loader, Load LoRA Pair or Load B-LoRA")


# ------------------------------------------------------------------------------------------ error types


def _builtin_type(exc: BaseException) -> type:
    return next(t for t in type(exc).__mro__ if t.__module__ == "builtins")


def plain_errors(execute):
    """Raise the pack's own exception classes as their builtin base (ValueError, OSError, ...).

    ComfyUI names a failed node's exception type by module in /history and on the error dialog, and a custom
    node's modules are named after their folder's absolute path ('_x_srv_x_ComfyUI_x_custom_nodes...'): a
    server's layout would show in every error. Messages and tracebacks are kept; ComfyUI's own exceptions
    (Interrupt) pass untouched."""
    pack = __name__.split(".")[0]

    @functools.wraps(execute)
    def run(*args, **kwargs):
        try:
            return execute(*args, **kwargs)
        except Exception as e:
            if not type(e).__module__.startswith(pack):
                raise
            plain = _builtin_type(e)
            try:
                replacement = plain(*e.args) if plain is OSError else plain(str(e))
            except Exception:  # noqa: BLE001 - a builtin whose constructor wants other arguments
                replacement = RuntimeError(str(e))
            raise replacement.with_traceback(e.__traceback__) from None

    return run


def check_name(name) -> str:
    """The run's name as typed, if it can be a file-name stem on every system; ValueError naming `name`."""
    if not isinstance(name, str):
        raise ValueError(f"name = {shown(name)} is not allowed: text")
    name = name.strip()
    if not NAME_RE.match(name):
        raise ValueError(f"name = {shown(name)} is not allowed: 1-80 letters, digits, '_', '-' or '.', starting with "
                         "a letter or digit (it becomes the file names)")
    if name.endswith("."):
        raise ValueError(f"name = {shown(name)} is not allowed: it may not end with '.' (Windows drops it)")
    if name.split(".")[0].upper() in WINDOWS_RESERVED:
        raise ValueError(f"name = {shown(name)} is not allowed: {name.split('.')[0]} is a reserved device name on "
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
        raise ValueError(f"{input_name} = {shown(value)}: {reason}") from None
