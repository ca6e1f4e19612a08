"""The farm: one Ray actor per ComfyUI worker, one task per image, Ray for scheduling, placement and retries.

A task is done when the job's files are: the graph is queued with run_mode = blocking (the prompt ends when the
training ends), then the job's record and files are read through the pack's job routes. Faults:
  - the worker refuses or fails the graph: that image fails with the worker's message; the farm goes on;
  - the worker dies mid-job: the actor waits `grace_s` for it; back in time, the interrupted job is resumed
    from its checkpoint (POST /unziplora/jobs/{id}/resume); not back, the task raises WorkerLost, the worker is
    dropped for this run and the image is trained again on another worker;
  - the Ray actor process itself dies: Ray restarts it and retries the task (max_restarts / max_task_retries).
Files are downloaded into <out>/.partial/ and renamed into <out>/<name>_<stem>/ before the manifest names them.
"""

from __future__ import annotations

import copy
import os
import sys
import time
import uuid

import ray

from .worker_client import WorkerClient, WorkerDown, WorkerRefused, history_error

UPLOAD_SUBFOLDER = "unziplora_farm"


class WorkerLost(RuntimeError):
    """The worker died mid-job and did not come back within the grace period."""


def train_node_of(graph: dict) -> tuple[str, str]:
    """(train node id, its LoadImage node id) of an API-format workflow; ValueError saying what is wrong."""
    trains = [k for k, n in graph.items() if isinstance(n, dict) and n.get("class_type") == "UnZipLoRATrain"]
    if len(trains) != 1:
        raise ValueError(f"the workflow must have exactly one UnZipLoRATrain node (API format); it has {len(trains)}")
    link = graph[trains[0]].get("inputs", {}).get("image")
    if not (isinstance(link, list) and str(link[0]) in graph and graph[str(link[0])].get("class_type") == "LoadImage"):
        raise ValueError("the UnZipLoRATrain node's image input must come from a LoadImage node")
    return trains[0], str(link[0])


def graph_for(graph: dict, prompts: dict, name: str) -> dict:
    """The workflow for one image: its prompts and name, run_mode blocking (the LoadImage is set on the worker)."""
    g = copy.deepcopy(graph)
    train, _ = train_node_of(g)
    inputs = g[train]["inputs"]
    inputs.update(content_prompt=prompts["content"], style_prompt=prompts["style"],
                  combined_prompt=prompts.get("combined", ""), name=name, run_mode="blocking")
    return g


@ray.remote(num_cpus=0, max_restarts=2, max_task_retries=1)
class WorkerActor:
    """Drives one ComfyUI worker: one image at a time (the worker's own queue would serialise them anyway)."""

    def __init__(self, url: str, grace_s: float, poll_s: float = 0.5):
        self.client = WorkerClient(url)
        self.url, self.grace_s, self.poll_s = url, grace_s, poll_s
        self.client_id = f"unziplora-farm-{uuid.uuid4().hex[:8]}"

    def _back_in_grace(self) -> bool:
        end = time.monotonic() + self.grace_s
        while time.monotonic() < end:
            if self.client.alive():
                return True
            time.sleep(self.poll_s)
        return False

    def _recover(self, name: str, graph: dict, since: float) -> tuple[str | None, str | None]:
        """After the worker came back: (prompt id to follow, finished job id). Resumes the interrupted job."""
        mine = [j for j in self.client.jobs() if j.get("info", {}).get("requested_name") == name
                and (j.get("created") or 0) >= since - 300 and not j.get("continued_by")]
        if not mine:
            return self.client.queue(graph, self.client_id), None  # it never started: queue it again
        job = max(mine, key=lambda j: j.get("created") or 0)
        if job["state"] == "done":
            return None, job["id"]
        if job.get("resumable"):
            return self.client.resume(job["id"], self.client_id), None
        return self.client.queue(graph, self.client_id), None  # no checkpoint yet: from the start

    def train(self, image: str, path: str, graph: dict, name: str, partial_root: str) -> dict:
        t0, since = time.time(), time.time()
        train_node, load_node = train_node_of(graph)
        attempt = {"worker": self.url, "resumed": 0}
        if not self.client.alive() and not self._back_in_grace():
            raise WorkerLost(f"{self.url} does not answer")
        try:
            stem, ext = os.path.splitext(image)
            uploaded = self.client.upload_image(path, UPLOAD_SUBFOLDER, f"{stem}-{uuid.uuid4().hex[:6]}{ext}")
            graph = copy.deepcopy(graph)
            graph[load_node]["inputs"]["image"] = uploaded
            prompt_id, job_id = self.client.queue(graph, self.client_id), None
        except WorkerRefused as e:
            return {"status": "failed", "error": str(e), "worker": self.url, "attempt": attempt}
        except WorkerDown:
            raise WorkerLost(f"{self.url} went down while the image was sent") from None
        entry = None
        while job_id is None:
            try:
                entry = self.client.history(prompt_id)
                if entry is None and not self._in_queue(prompt_id) and self.client.history(prompt_id) is None:
                    raise WorkerDown(f"{self.url} forgot prompt {prompt_id}: it restarted")
                if entry is None:
                    time.sleep(self.poll_s)
                    continue
                if entry.get("status", {}).get("status_str") != "success":
                    return {"status": "failed", "error": history_error(entry), "worker": self.url, "attempt": attempt}
                job_id = entry["outputs"][train_node]["unziplora_job"][0]
            except WorkerDown:
                if not self._back_in_grace():
                    raise WorkerLost(f"{self.url} died mid-job and was not back within {self.grace_s:.0f} s") from None
                try:
                    prompt_id, job_id = self._recover(name, graph, since)
                except WorkerRefused as e:
                    return {"status": "failed", "error": str(e), "worker": self.url, "attempt": attempt}
                attempt["resumed"] += 1
        try:
            job = self.client.job(job_id)
            if job["state"] != "done":
                return {"status": "failed", "error": job.get("error") or f"job {job_id} is {job['state']}",
                        "worker": self.url, "attempt": attempt}
            folder = os.path.join(partial_root, f"{stem}-{uuid.uuid4().hex[:8]}")
            os.makedirs(os.path.join(folder, "previews"))
            files: dict = {"previews": []}
            for f in self.client.files(job_id):
                rel = f"previews/{f['name']}" if f["kind"] == "preview" else f["name"]
                self.client.download(f["url"], os.path.join(folder, rel))
                if f["kind"] == "preview":
                    files["previews"].append(rel)
                else:
                    files[f["kind"]] = rel
        except WorkerDown:
            raise WorkerLost(f"{self.url} went down while its files were fetched") from None
        missing = [k for k in ("content", "style", "bundle") if k not in files]
        if missing:
            return {"status": "failed", "error": f"job {job_id} is done but has no {', '.join(missing)} file",
                    "worker": self.url, "attempt": attempt}
        scores = {k: v for k, v in (entry or {}).get("outputs", {}).items()
                  if graph.get(k, {}).get("class_type") == "UnZipLoRAScore"} or None
        return {"status": "done", "job": job_id, "worker": self.url, "folder": folder, "files": files,
                "name": job.get("info", {}).get("output_name", name), "loss": job.get("loss"), "steps": job.get("step"),
                "it_per_s": job.get("it_per_s"), "seconds": round(time.time() - t0, 1), "scores": scores,
                "attempt": attempt}

    def _in_queue(self, prompt_id: str) -> bool:
        q = self.client.get_json("/queue")
        return any(len(item) > 1 and item[1] == prompt_id
                   for item in q.get("queue_running", []) + q.get("queue_pending", []))


def log(message: str) -> None:
    print(f"[farm {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)
