"""Train and ComfyUI's cache: an unchanged Train node queued again (the stock Run) starts no second job.

Two layers, because ComfyUI's cache lives in memory and holds only what the last prompts ran:
  * fingerprint: the Train node's widget values and how many of the jobs they started ended without LoRAs
    (failed, cancelled, interrupted). Unchanged inputs whose job is done or still running give the same value,
    so ComfyUI answers the node from its cache (the panel gets the job id back through "executed"); a job that
    ended without LoRAs changes it, and Run trains again.
  * reuse: when the cache cannot answer (another workflow ran in between, a restart), execute() looks for a
    job started from the same request (this node's inputs, the graph upstream of it, the image's pixels) that
    is done with its files on disk, or still queued / running, and returns that job instead of starting one.
The explicit ways to train again skip both: the panel's Train button and Resume put a fresh value under
FORCE_KEY in the train node's inputs. ComfyUI keys its cache on every input of the prompt, known or not, and
hands unknown ones to no node, so the key only breaks the cache (and execute() reads it from the prompt).
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

FORCE_KEY = "unziplora_train"  # in the train node's prompt inputs: a fresh value = "train again" (not a widget)
ENDED_WITHOUT_LORAS = ("failed", "cancelled", "interrupted")
REUSABLE_ACTIVE = ("queued", "running")


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=repr).encode()).hexdigest()[:24]


def widget_key(inputs: dict) -> str:
    """The widget values the fingerprint sees: ComfyUI hands it the constant inputs, linked ones as None."""
    return _digest({k: v for k, v in inputs.items() if k != FORCE_KEY and v is not None and not isinstance(v, list)})


def widget_key_of(prompt, node_id) -> str | None:
    """widget_key of the train node as queued (execute() sees the prompt, the fingerprint its constants)."""
    node = prompt.get(str(node_id)) if isinstance(prompt, dict) else None
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return widget_key(inputs) if isinstance(inputs, dict) else None


def fingerprint(manager, inputs: dict) -> str:
    key = widget_key(inputs)
    ended = sum(1 for j in manager.list() if j.info.get("widget_key") == key and j.state in ENDED_WITHOUT_LORAS)
    return f"{key}:{ended}"


def forced(prompt, node_id) -> bool:
    """Whether the panel's Train button (or Resume) queued this node: then it trains whatever ran before."""
    node = prompt.get(str(node_id)) if isinstance(prompt, dict) else None
    inputs = node.get("inputs") if isinstance(node, dict) else None
    return isinstance(inputs, dict) and bool(inputs.get(FORCE_KEY))


def force_value() -> str:
    return uuid.uuid4().hex


def _upstream(prompt: dict, node_id: str) -> dict:
    """The node and every node it depends on, as queued (without ComfyUI's own bookkeeping or FORCE_KEY)."""
    seen, todo, out = set(), [str(node_id)], {}
    while todo:
        nid = todo.pop()
        if nid in seen or nid not in prompt or not isinstance(prompt[nid], dict):
            continue
        seen.add(nid)
        node = prompt[nid]
        inputs = {k: v for k, v in (node.get("inputs") or {}).items() if k != FORCE_KEY}
        out[nid] = [node.get("class_type"), inputs]
        for v in inputs.values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], (str, int)):
                todo.append(str(v[0]))
    return out


def image_digest(image) -> str:
    """The pixels: a LoadImage node keeps its file name when the file behind it changes."""
    try:
        t = image.detach().to("cpu").contiguous()
        return hashlib.sha256(t.numpy().tobytes()).hexdigest()[:24] + str(tuple(t.shape))
    except Exception:
        return repr(getattr(image, "shape", None))


def request_key(prompt, node_id, image) -> str:
    """What the job was asked to do: this node's inputs, the graph upstream of it, the image's pixels."""
    graph = _upstream(prompt, node_id) if isinstance(prompt, dict) else {}
    return _digest({"graph": graph, "image": image_digest(image)})


def reusable_job(manager, key: str, node_id):
    """The newest job started from the same request by the same node that is done with its LoRAs on disk, or
    still queued / running; None when there is none (then the node starts one)."""
    for job in manager.list():  # newest first
        if job.info.get("request_key") != key or str(job.info.get("node_id")) != str(node_id):
            continue
        if job.state in REUSABLE_ACTIVE:
            return job
        if job.state == "done":
            files = [job.outputs.get("content"), job.outputs.get("style")] if job.outputs else []
            if files and all(isinstance(f, str) and os.path.isfile(f) for f in files):
                return job
    return None
