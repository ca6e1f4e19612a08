"""The dispatcher's main loop: images -> Ray tasks on worker actors -> committed folders + manifest."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import time
from collections import deque

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from .dispatch import WorkerActor, WorkerLost, graph_for, log, train_node_of
from .manifest import PARTIAL, Manifest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _captions():
    """training/captions.py, loaded on its own: the same caption rules as Train Folder, without the pack."""
    spec = importlib.util.spec_from_file_location("unziplora_captions", os.path.join(REPO, "training", "captions.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plan(images_dir: str, graph: dict, name: str | None) -> list[dict]:
    captions = _captions()
    train, _ = train_node_of(graph)
    inputs = graph[train]["inputs"]
    name = name or str(inputs.get("name") or "farm")
    items = []
    for image in captions.list_images(images_dir):
        path = os.path.join(images_dir, image)
        prompts = captions.prompts_for(captions.read_caption(path), str(inputs.get("content_prompt", "")),
                                       str(inputs.get("style_prompt", "")), str(inputs.get("combined_prompt", "")))
        job_name = captions.job_name(name, image)
        items.append({"image": image, "path": path, "name": job_name, "graph": graph_for(graph, prompts, job_name)})
    return items


def commit(out_dir: str, item: dict, result: dict, attempts: list) -> dict:
    """Rename the finished folder into place (pair.json inside), then return the manifest entry."""
    final = os.path.join(out_dir, item["name"])
    n = 2
    while os.path.exists(final):  # never overwrite: a name already taken gets a suffix
        final = os.path.join(out_dir, f"{item['name']}_{n}")
        n += 1
    rel = os.path.basename(final)
    files = {k: (f"{rel}/{v}" if isinstance(v, str) else [f"{rel}/{p}" for p in v]) for k, v in result["files"].items()}
    entry = {"image": item["image"], "status": "done", "job": result["job"], "worker": result["worker"],
             "name": result["name"], "files": files, "loss": result["loss"], "steps": result["steps"],
             "it_per_s": result["it_per_s"], "seconds": result["seconds"], "scores": result["scores"],
             "error": None, "attempts": attempts}
    with open(os.path.join(result["folder"], "pair.json"), "w", encoding="utf-8") as f:
        json.dump(entry, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.rename(result["folder"], final)
    return entry


def dispatch(images_dir: str, graph: dict, workers: list[str], out_dir: str, *, name: str | None = None,
             grace_s: float = 120.0, poll_s: float = 0.5) -> Manifest:
    """Train every image not yet done in the manifest; returns the manifest. Ray must be initialised."""
    manifest = Manifest(out_dir)
    todo = deque(i for i in plan(images_dir, graph, name) if not manifest.done(i["image"]))
    log(f"{len(todo)} image(s) to train on {len(workers)} worker(s); {sum(map(manifest.done, manifest.entries))} "
        f"already done")
    partial_root = os.path.join(out_dir, PARTIAL)
    os.makedirs(partial_root, exist_ok=True)
    # the actors write into out_dir: place them on this (the driver's) node
    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    actors = {url: WorkerActor.options(scheduling_strategy=here).remote(url, grace_s, poll_s) for url in workers}
    idle, running, attempts = deque(workers), {}, {}
    while todo or running:
        while todo and idle:
            url, item = idle.popleft(), todo.popleft()
            log(f"{item['image']} -> {url}")
            ref = actors[url].train.remote(item["image"], item["path"], item["graph"], item["name"], partial_root)
            running[ref] = (url, item)
        if not running:  # images left, no worker left
            for item in todo:
                manifest.record({"image": item["image"], "status": "failed", "error": "no worker left: every worker "
                                 "was lost", "attempts": attempts.get(item["image"], [])})
            break
        [ref], _ = ray.wait(list(running), num_returns=1)
        url, item = running.pop(ref)
        tried = attempts.setdefault(item["image"], [])
        try:
            result = ray.get(ref)
        except WorkerLost as e:  # Ray raises the task's exception as an instance of its class
            log(f"{item['image']}: {getattr(e, 'cause', None) or e}; worker dropped, the image goes to another worker")
            tried.append({"worker": url, "outcome": "worker lost"})
            todo.appendleft(item)
            continue
        except ray.exceptions.RayError as e:  # the actor process died (Ray restarts it: max_restarts)
            tried.append({"worker": url, "outcome": f"actor lost: {type(e).__name__}"})
            if sum(t["outcome"].startswith("actor lost") for t in tried) < 3:
                log(f"{item['image']}: Ray lost the actor of {url} ({type(e).__name__}); trying again")
                idle.append(url)
                todo.appendleft(item)
            else:
                log(f"{item['image']}: Ray lost the actor 3 times; the image fails this run")
                manifest.record({"image": item["image"], "status": "failed", "worker": url, "attempts": tried,
                                 "error": f"Ray lost the actor 3 times ({type(e).__name__})"})
                idle.append(url)
            continue
        idle.append(url)
        outcome = result["status"] + (f" (resumed {result['attempt']['resumed']}x)" if result["attempt"]["resumed"] else "")
        tried.append({"worker": url, "outcome": outcome})
        if result["status"] == "done":
            entry = commit(out_dir, item, result, tried)
            log(f"{item['image']}: done on {url} in {result['seconds']} s -> {entry['files']['content']}")
        else:
            entry = {"image": item["image"], "status": "failed", "worker": url, "error": result["error"],
                     "attempts": tried}
            log(f"{item['image']}: failed on {url}: {result['error']}")
        manifest.record(entry)
    shutil.rmtree(partial_root, ignore_errors=True)  # every task has ended: anything left there is a torso
    return manifest


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m farm", description="Train one UnZipLoRA pair per image of a folder "
                                "across ComfyUI workers, with Ray.")
    p.add_argument("--images", required=True, help="folder of images (+ <stem>.txt captions)")
    p.add_argument("--workflow", required=True, help="API-format workflow with one LoadImage -> UnZipLoRATrain")
    p.add_argument("--worker", action="append", required=True, help="a ComfyUI worker URL (repeat)")
    p.add_argument("--out", required=True, help="output folder: one folder per image + manifest.json/.csv")
    p.add_argument("--name", default=None, help="name prefix (default: the Train node's name)")
    p.add_argument("--grace", type=float, default=120.0, help="seconds a dead worker has to come back (default 120)")
    p.add_argument("--address", default=None, help="Ray cluster address ('auto' joins `ray start`); default: local")
    p.add_argument("--num-cpus", type=int, default=2, help="local Ray only: CPUs Ray may use (default 2)")
    p.add_argument("--object-store-mb", type=int, default=100, help="local Ray only: object store size")
    args = p.parse_args(argv)
    with open(args.workflow, encoding="utf-8") as f:
        graph = json.load(f)
    train_node_of(graph)  # a bad workflow fails here, before Ray starts
    runtime_env = {"py_modules": [os.path.join(REPO, "farm")]}
    if args.address:
        ray.init(address=args.address, runtime_env=runtime_env, log_to_driver=False)
    else:
        # a local Ray kills workers when the machine's memory is over 95 % full, whoever uses it; the actors are
        # small HTTP clients, so on a shared machine that only loses work (RAY_memory_monitor_refresh_ms=0)
        os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
        ray.init(num_cpus=args.num_cpus, object_store_memory=args.object_store_mb * 1024 * 1024,
                 include_dashboard=False, runtime_env=runtime_env, log_to_driver=False)
    t0 = time.time()
    try:
        manifest = dispatch(args.images, graph, args.worker, args.out, name=args.name, grace_s=args.grace)
    finally:
        ray.shutdown()
    done = sum(1 for e in manifest.entries.values() if e.get("status") == "done")
    failed = sorted(i for i, e in manifest.entries.items() if e.get("status") != "done")
    log(f"finished in {time.time() - t0:.0f} s: {done} done, {len(failed)} failed {failed if failed else ''}")
    return 0 if not failed else 1
