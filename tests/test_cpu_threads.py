"""How many intra-op threads a CPU training job takes (training.service.cpu_training_threads)."""

from __future__ import annotations

import os
import threading

import pytest
import torch

from unziplora_pack.training.service import CPU_THREADS_ENV, cpu_training_threads


def test_default_leaves_one_core_for_comfyui():
    cores = len(os.sched_getaffinity(0))
    assert cpu_training_threads({}) == max(1, cores - 1)


def test_environment_variable_overrides():
    assert cpu_training_threads({CPU_THREADS_ENV: " 3 "}) == 3


@pytest.mark.parametrize("bad", ["0", "-2", "two", "1.5"])
def test_bad_value_names_the_variable_and_what_is_allowed(bad):
    with pytest.raises(ValueError) as e:
        cpu_training_threads({CPU_THREADS_ENV: bad})
    assert CPU_THREADS_ENV in str(e.value) and repr(bad) in str(e.value) and "1 or more" in str(e.value)


def test_a_running_thread_keeps_its_own_count():
    """The job sets its count in its own thread; a thread that already ran torch ops (ComfyUI's prompt
    thread) keeps its count."""
    before = torch.get_num_threads()
    seen = {}
    # what a fresh thread gets (an earlier test in this process may have left the main thread's count changed)
    probe = threading.Thread(target=lambda: seen.setdefault("fresh", torch.get_num_threads()))
    probe.start()
    probe.join()
    started, go_on = threading.Event(), threading.Event()

    def other():
        (torch.ones(1 << 20) * 2).sum()  # a parallel op: the thread settles its count, as ComfyUI's has
        started.set()
        go_on.wait(10)
        seen["other"] = torch.get_num_threads()

    t = threading.Thread(target=other)
    t.start()
    started.wait(10)

    def job():
        torch.set_num_threads(1)
        seen["job"] = torch.get_num_threads()

    j = threading.Thread(target=job)
    j.start()
    j.join()
    go_on.set()
    t.join()
    try:
        assert seen["job"] == 1
        assert seen["other"] == seen["fresh"]
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)


def test_bad_value_fails_before_a_job_exists(tmp_path, monkeypatch):
    """Read when the node starts the job: the prompt fails on the node and no job is queued."""
    from unziplora_pack.training.config import TrainConfig
    from unziplora_pack.training.jobs import JobManager
    from unziplora_pack.training.service import OutputDirs, TrainingService

    monkeypatch.setenv(CPU_THREADS_ENV, "lots")
    svc = TrainingService(JobManager(None), OutputDirs(*(str(tmp_path / d) for d in ("l", "b", "c"))),
                          device=torch.device("cpu"))
    with pytest.raises(ValueError, match=CPU_THREADS_ENV):
        svc.start(None, TrainConfig(steps=8, resolution=64), "x")
    assert svc.manager.list() == []
