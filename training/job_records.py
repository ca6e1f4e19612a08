"""A job's record as jobs.json and the routes hold it, and how a record read back from jobs.json is checked."""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, field

from .checkpoints import step_of
from .paths import PathDisplay

ACTIVE = ("queued", "running", "cancelling")
FINAL = ("cancelled", "failed", "interrupted", "done")
RESUMABLE = ("cancelled", "failed", "interrupted")
STATES = ACTIVE + FINAL
JOB_ID_RE = re.compile(r"^[0-9a-f]{12}$")  # uuid4().hex[:12], as JobManager.submit makes them


def valid_job_id(value) -> bool:
    return isinstance(value, str) and bool(JOB_ID_RE.match(value))


@dataclass
class JobRecord:
    id: str
    name: str
    state: str = "queued"
    step: int = 0
    total: int = 0
    loss: float | None = None
    losses: list = field(default_factory=list)
    it_per_s: float | None = None
    eta_s: float | None = None
    outputs: dict = field(default_factory=dict)
    checkpoint: str | None = None
    checkpoint_bytes: int = 0  # bytes in this job's checkpoint folder
    previews: list = field(default_factory=list)
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    info: dict = field(default_factory=dict)  # mode, prompts, base model, node id: whatever the UI shows
    resume_prompt: dict | None = None  # the API prompt that started it, re-queued by POST .../resume (extra data)
    resumed_from: str | None = None
    continued_by: str | None = None  # the job that resumed this one: a job is resumed at most once
    resume_pending: str | None = None  # prompt id of a queued resume of this job (POST .../resume)

    @property
    def resumable(self) -> bool:
        return (self.state in RESUMABLE and self.checkpoint is not None and self.resume_prompt is not None
                and self.continued_by is None)

    @property
    def selection_steps(self) -> list[int]:
        """Steps at which the column schedule selects columns ([] for modes without column separation): what the
        loss plot marks, so the browser does not re-derive the schedule."""
        from ..unziplora.roles import MODES
        from ..unziplora.schedule import selection_steps

        config = self.info.get("config")
        try:
            config = json.loads(config) if isinstance(config, str) else config
            mode = MODES.get(config.get("mode", self.info.get("mode")))
            if mode is None or not mode.column_separation:
                return []
            return selection_steps(int(config.get("steps") or self.total), int(config.get("sample_times") or 0))
        except (ValueError, TypeError, AttributeError):
            return []

    def public(self, display: PathDisplay | None = None) -> dict:
        d = asdict(self)
        d.pop("resume_prompt")
        d["resumable"] = self.resumable
        d["active"] = self.state in ACTIVE  # the browser's one test for "still going"
        d["selection_steps"] = self.selection_steps
        d["checkpoint_step"] = step_of(self.checkpoint)  # the step a resume starts from (None: no checkpoint)
        if isinstance(d["info"].get("config"), str):  # kept as TrainConfig.to_json() in jobs.json: sent as an object
            try:
                d["info"]["config"] = json.loads(d["info"]["config"])
            except ValueError:
                d["info"].pop("config")
        if display is not None:
            d["outputs"] = {k: display.path(v) for k, v in d["outputs"].items()}
            d["checkpoint"] = display.path(d["checkpoint"])
            d["error"] = display.text(d["error"])
            planned = d["info"].get("planned_outputs")
            if isinstance(planned, dict):
                d["info"]["planned_outputs"] = {k: display.path(v) for k, v in planned.items()}
        return d


def record_from(item, known) -> tuple[JobRecord | None, str]:
    if not isinstance(item, dict):
        return None, f"not an object but {type(item).__name__}"
    if not valid_job_id(item.get("id")):
        return None, f"id {str(item.get('id'))[:40]!r} is not a job id"
    if item.get("state") not in STATES:
        return None, f"job {item['id']}: unknown state {str(item.get('state'))[:40]!r}"
    types = {"name": str, "step": int, "total": int, "outputs": dict, "info": dict, "losses": list,
             "previews": list}
    for key, typ in types.items():
        if key in item and not isinstance(item[key], typ):
            return None, f"job {item['id']}: {key} is not a {typ.__name__}"
    for key in ("checkpoint", "resumed_from", "continued_by", "error"):
        if item.get(key) is not None and not isinstance(item[key], str):
            return None, f"job {item['id']}: {key} is not a string"
    if item.get("resume_prompt") is not None and not isinstance(item["resume_prompt"], dict):
        return None, f"job {item['id']}: resume_prompt is not an object"
    try:
        return JobRecord(**{k: v for k, v in item.items() if k in known}), ""
    except TypeError as e:
        return None, f"job {item['id']}: {e}"
