"""The farm's record of a catalogue: manifest.json (the truth) and manifest.csv (the same, for spreadsheets).

One entry per image file name: status done | failed, the job, the worker, the files (relative to the output
folder), loss, steps, seconds, scores when the workflow had Score, the error of a failed image, and every
attempt. Both files are written to a temporary file, fsynced and renamed: a killed dispatcher leaves the last
complete manifest. An image is committed by renaming its finished folder into place *before* the manifest
names it; each folder carries pair.json, so a re-run that finds a folder the manifest lacks (killed between the
two) adopts it instead of training the image again.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil

PARTIAL = ".partial"  # <out>/.partial/<image>-<random>/: files being downloaded; deleted at start
CSV_FIELDS = ("image", "status", "job", "worker", "name", "content", "style", "bundle", "previews", "loss", "steps",
              "seconds", "scores", "error", "attempts")


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


class Manifest:
    def __init__(self, out_dir: str):
        self.out_dir = out_dir
        self.path = os.path.join(out_dir, "manifest.json")
        self.csv_path = os.path.join(out_dir, "manifest.csv")
        self.entries: dict[str, dict] = {}
        os.makedirs(out_dir, exist_ok=True)
        if os.path.exists(self.path):
            with open(self.path, encoding="utf-8") as f:
                self.entries = json.load(f).get("images", {})
        self._adopt_committed_folders()
        shutil.rmtree(os.path.join(out_dir, PARTIAL), ignore_errors=True)  # half-downloaded: never used

    def _adopt_committed_folders(self) -> None:
        adopted = False
        for entry in sorted(os.listdir(self.out_dir)):
            pair = os.path.join(self.out_dir, entry, "pair.json")
            if entry.startswith(".") or not os.path.isfile(pair):
                continue
            with open(pair, encoding="utf-8") as f:
                record = json.load(f)
            if self.entries.get(record.get("image"), {}).get("status") != "done":
                self.entries[record["image"]] = record
                adopted = True
        if adopted:
            self.save()

    def done(self, image: str) -> bool:
        return self.entries.get(image, {}).get("status") == "done"

    def record(self, entry: dict) -> None:
        self.entries[entry["image"]] = entry
        self.save()

    def save(self) -> None:
        _atomic_write(self.path, json.dumps({"version": 1, "images": self.entries}, indent=1, sort_keys=True))
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=CSV_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for image in sorted(self.entries):
            e = self.entries[image]
            files = e.get("files") or {}
            writer.writerow({**e, "content": files.get("content", ""), "style": files.get("style", ""),
                             "bundle": files.get("bundle", ""), "previews": len(files.get("previews", [])),
                             "scores": json.dumps(e.get("scores")) if e.get("scores") else "",
                             "attempts": "; ".join(f"{a.get('worker')}: {a.get('outcome')}" for a in e.get("attempts", []))})
        _atomic_write(self.csv_path, buf.getvalue())
