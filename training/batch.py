"""A catalogue: one job per image of a folder, queued behind each other, seen and steered as one batch.

Pure helpers (no ComfyUI imports): which files of a folder are images, the prompts of each image (its kohya
caption `<stem>.txt` when present), the per-image job name, a shared base model copied lazily per job, and the
batch view the routes and the sidebar show (queue position, per-job and whole-batch ETA).

A batch is not stored on its own: every job of a batch carries info["batch"] = {"id", "index", "count", "file",
"folder"}, so jobs.json, resume and retention see ordinary jobs. An image's *current* job is the newest job with
its (batch id, index): a resumed or restarted image leaves its earlier job in the list as history.
"""

from __future__ import annotations

import copy

from .captions import (BATCH_ID_RE, CAPTION_KEYS, IMAGE_EXTENSIONS, job_name, list_images, new_batch_id,  # noqa: F401
                       prompts_for, read_caption, trigger_of, valid_batch_id)
from .loop import TrainInputs


class SharedBaseInputs(TrainInputs):
    """A batch item's inputs: the batch's one private base model is copied for the job when the job first
    touches `unet` (in the job thread), so a queued batch holds one base copy, not one per image."""

    def __init__(self, base, **fields):
        self._base, self._unet = base, None
        super().__init__(unet=base, **fields)

    @property
    def unet(self):
        if self._unet is None:
            self._unet = copy.deepcopy(self._base)
        return self._unet

    @unet.setter
    def unet(self, value):
        self._base = value

    def __repr__(self) -> str:  # the dataclass repr would copy the model
        return f"SharedBaseInputs(images={self.info.get('images')}, prompt={self.info.get('prompt')!r})"


# ---- the batch view ---------------------------------------------------------------------------------------
ACTIVE = ("queued", "running", "cancelling")
UNFINISHED = ("queued", "running", "cancelling", "cancelled", "failed", "interrupted")


def batch_of(job: dict) -> dict | None:
    b = (job.get("info") or {}).get("batch")
    return b if isinstance(b, dict) and valid_batch_id(b.get("id")) else None


def _steps_left(job: dict) -> int:
    return max(0, int(job.get("total") or 0) - int(job.get("step") or 0))


def queue_view(jobs: list[dict]) -> dict:
    """{job id: {"position", "eta_s", "wait_s"}} for every queued or running job of the server.

    position 0 is the running job, 1.. the queued ones in the order they will run. wait_s: time until the job
    starts; eta_s: until it ends. A running job's remaining time is its own ETA; a queued job's is its steps at
    the speed the running (or last measured) job reached, None while nothing has been measured."""
    running = [j for j in jobs if j.get("state") in ("running", "cancelling")]
    queued = sorted((j for j in jobs if j.get("state") == "queued"), key=lambda j: j.get("created") or 0)
    speeds = [j.get("it_per_s") for j in sorted(jobs, key=lambda j: j.get("started") or 0) if j.get("it_per_s")]
    speed = speeds[-1] if speeds else None
    out, clock = {}, 0.0
    for j in running:
        eta = j.get("eta_s")
        if eta is None and speed:
            eta = _steps_left(j) / speed
        out[j["id"]] = {"position": 0, "wait_s": 0.0, "eta_s": eta}
        clock = None if (clock is None or eta is None) else clock + eta
    for pos, j in enumerate(queued, start=1):
        own = _steps_left(j) / speed if speed else None
        end = None if clock is None or own is None else clock + own
        out[j["id"]] = {"position": pos, "wait_s": clock, "eta_s": end}
        clock = end
    return out


def batch_views(jobs: list[dict]) -> list[dict]:
    """The server's batches, newest first: each with its items (the current job of every image), their queue
    positions and ETAs, counts by state, the whole batch's ETA and whether anything can be resumed."""
    queue = queue_view(jobs)
    groups: dict[str, dict] = {}
    for job in sorted(jobs, key=lambda j: j.get("created") or 0):
        b = batch_of(job)
        if b is None:
            continue
        g = groups.setdefault(b["id"], {"id": b["id"], "name": (job.get("info") or {}).get("batch_name", ""),
                                        "folder": b.get("folder", ""), "count": int(b.get("count") or 0),
                                        "node_id": (job.get("info") or {}).get("node_id"),
                                        "workflow_id": (job.get("info") or {}).get("workflow_id"),
                                        "created": job.get("created"), "items": {}})
        g["items"][int(b.get("index") or 0)] = job  # newer jobs of the same image replace older ones
    views = []
    for g in groups.values():
        items = []
        for index in sorted(g["items"]):
            job = g["items"][index]
            q = queue.get(job["id"], {})
            items.append({"index": index, "file": batch_of(job).get("file", ""), "job": job,
                          "position": q.get("position"), "wait_s": q.get("wait_s"), "eta_s": q.get("eta_s")})
        counts: dict[str, int] = {}
        for it in items:
            counts[it["job"]["state"]] = counts.get(it["job"]["state"], 0) + 1
        active = [it for it in items if it["job"]["state"] in ACTIVE]
        etas = [it["eta_s"] for it in active]
        g.update(items=items, counts=counts,
                 state="active" if active else ("done" if counts.get("done", 0) == len(items) else "stopped"),
                 eta_s=(max(etas) if etas and None not in etas else None),
                 unfinished=[it["job"]["id"] for it in items if it["job"]["state"] in UNFINISHED[3:]],
                 active=[it["job"]["id"] for it in active])
        views.append(g)
    return sorted(views, key=lambda g: g.get("created") or 0, reverse=True)
