"""What the server sends for a job so the browser derives nothing itself (training/job_records.py)."""

from __future__ import annotations

import json

import pytest

from unziplora_pack.training.config import TrainConfig
from unziplora_pack.training.job_records import ACTIVE, STATES, JobRecord
from unziplora_pack.unziplora.schedule import schedule_period


@pytest.mark.parametrize("state", STATES)
def test_active_is_sent(state):
    assert JobRecord(id="0123456789ab", name="x", state=state).public()["active"] is (state in ACTIVE)


@pytest.mark.parametrize("mode,steps,times,expected", [
    ("unziplora", 9, 3, [1, 4, 7]),
    ("column", 600, 3, [1, 201, 401]),
    ("unziplora", 3, 3, [1, 3]),  # the schedule's period is at least 2: not every step
    ("blora", 9, 3, []), ("naive", 9, 3, []), ("prompt", 9, 3, []),
])
def test_selection_steps_follow_the_schedules_own_rule(mode, steps, times, expected):
    config = TrainConfig(mode=mode, steps=steps, sample_times=times)
    job = JobRecord(id="0123456789ab", name="x", total=steps, info={"mode": mode, "config": config.to_json()})
    assert job.public()["selection_steps"] == expected
    assert job.public()["info"]["config"] == json.loads(config.to_json())  # an object, not JSON inside JSON
    if expected:
        period = schedule_period(steps, times)
        assert all(g % period == 1 % period for g in expected)


def test_a_record_without_settings_marks_nothing():
    damaged = JobRecord(id="0123456789ab", name="x", info={"config": "{not json"}).public()
    assert damaged["selection_steps"] == [] and "config" not in damaged["info"]
    assert JobRecord(id="0123456789ab", name="x").public()["selection_steps"] == []
    assert json.dumps(JobRecord(id="0123456789ab", name="x").public())


def test_the_record_sends_the_step_its_checkpoint_holds():
    """The checkpoint's file name is parsed on the server only (training/checkpoints.py); the panel's "Resuming from
    step N" reads checkpoint_step instead of parsing the path again."""
    from unziplora_pack.training import checkpoints

    path = f"/out/unziplora/checkpoints/cat/{checkpoints.file_name(200)}"
    job = JobRecord(id="0123456789ab", name="x", step=260, checkpoint=path)
    assert job.public()["checkpoint_step"] == 200
    assert JobRecord(id="0123456789ab", name="x", step=5).public()["checkpoint_step"] is None
