"""Train Folder's pure parts: which files are images, each image's prompts and name, the lazy base copy, and
the batch view (queue positions, ETAs, the current job of each image)."""

from __future__ import annotations


import pytest
import torch



@pytest.fixture(scope="module")
def b(pack):
    import importlib

    return importlib.import_module(f"{pack.__name__}.training.batch")


def test_list_images_skips_other_files_hidden_files_and_subfolders(b, tmp_path):
    for name in ("b.PNG", "a.jpg", "c.webp", "notes.txt", ".hidden.png", "x.md"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "d.png").write_bytes(b"x")
    assert b.list_images(str(tmp_path)) == ["a.jpg", "b.PNG", "c.webp"]


def test_job_name_is_name_and_stem_made_file_safe(b):
    assert b.job_name("cat", "shoe_01.png") == "cat_shoe_01"
    assert b.job_name("cat", "My photo (1).JPG") == "cat_My_photo_1"
    assert b.job_name("cat", "__.png") == "cat_image"
    assert len(b.job_name("n" * 70, "s" * 40 + ".png")) == 80


def test_trigger_is_the_content_word_the_style_prompt_lacks(b):
    assert b.trigger_of("A sks cat", "A cat in sketch style") == "sks"
    assert b.trigger_of("A photo of ohwx dog", "A dog in oil style") == "ohwx"
    assert b.trigger_of("A cat", "A cat in sketch style") == ""


def test_prompts_without_caption_are_the_nodes(b):
    assert b.prompts_for(None, "A sks cat", "A cat in sketch style", "") == {
        "content": "A sks cat", "style": "A cat in sketch style", "combined": ""}
    assert b.prompts_for("   \n", "A sks cat", "A cat in sketch style", "x")["combined"] == "x"


def test_plain_caption_is_the_subject_and_keeps_the_trigger(b):
    p = b.prompts_for("a red sneaker.\n", "A sks cat", "A cat in sketch style")
    assert p == {"content": "A sks red sneaker", "style": "a red sneaker in sketch style", "combined": ""}
    # a kohya caption that already carries the trigger keeps it once, and the style prompt drops it
    p = b.prompts_for("sks red sneaker", "A sks cat", "A cat in sketch style")
    assert p["content"] == "sks red sneaker" and p["style"] == "red sneaker in sketch style"
    # a style prompt without ' in ': the subject is prepended
    assert b.prompts_for("a vase", "A sks cat", "watercolor")["style"] == "a vase, watercolor"


def test_keyed_caption_lines_set_the_prompts(b):
    p = b.prompts_for("content: A sks vase\nstyle: A vase in ink style\n", "A sks cat", "A cat in sketch style", "c")
    assert p == {"content": "A sks vase", "style": "A vase in ink style", "combined": ""}
    p = b.prompts_for("combined: A sks cat at night in sketch style", "A sks cat", "A cat in sketch style")
    assert p["combined"] == "A sks cat at night in sketch style" and p["content"] == "A sks cat"


def test_shared_base_is_copied_once_per_job_and_never_changed(b):
    base = torch.nn.Linear(2, 2)
    before = base.weight.detach().clone()
    fields = dict(streams=None, posteriors=None, adm=torch.zeros(1), info={"images": 1})
    one, two = b.SharedBaseInputs(base, **fields), b.SharedBaseInputs(base, **fields)
    u1 = one.unet
    assert u1 is not base and one.unet is u1, "one copy per job, made on first use"
    with torch.no_grad():
        u1.weight.add_(1.0)
    assert torch.equal(base.weight, before) and torch.equal(two.unet.weight, before)
    assert "images=1" in repr(one)


def _job(id, state, created, index=None, batch_id="b" * 12, step=0, total=10, it_per_s=None, eta_s=None, started=None):
    info = {} if index is None else {"batch": {"id": batch_id, "index": index, "count": 3, "file": f"{index}.png"},
                                     "batch_name": "cat", "node_id": "5"}
    return {"id": id, "state": state, "created": created, "step": step, "total": total, "it_per_s": it_per_s,
            "eta_s": eta_s, "started": started, "info": info}


def test_queue_view_positions_and_etas(b):
    jobs = [_job("r", "running", 1, step=4, total=10, it_per_s=2.0, eta_s=3.0, started=5),
            _job("q2", "queued", 3, total=10), _job("q1", "queued", 2, total=20), _job("d", "done", 0)]
    q = b.queue_view(jobs)
    assert q["r"] == {"position": 0, "wait_s": 0.0, "eta_s": 3.0}
    assert q["q1"] == {"position": 1, "wait_s": 3.0, "eta_s": 13.0}  # 20 steps at 2 it/s after 3 s
    assert q["q2"] == {"position": 2, "wait_s": 13.0, "eta_s": 18.0}
    assert "d" not in q
    # nothing measured yet: positions, no ETA
    q = b.queue_view([_job("x", "queued", 1), _job("y", "queued", 2)])
    assert [q["x"]["position"], q["y"]["position"]] == [1, 2] and q["y"]["eta_s"] is None


def test_batch_view_groups_current_jobs_counts_and_eta(b):
    jobs = [_job("a1", "done", 1, index=0), _job("b1", "interrupted", 2, index=1),
            _job("c1", "running", 3, index=2, step=5, it_per_s=1.0, eta_s=5.0, started=3),
            _job("b2", "queued", 4, index=1),  # image 1 again (resumed): replaces b1
            _job("solo", "done", 0)]  # not in a batch
    [view] = b.batch_views(jobs)
    assert [it["job"]["id"] for it in view["items"]] == ["a1", "b2", "c1"]
    assert view["counts"] == {"done": 1, "queued": 1, "running": 1}
    assert view["state"] == "active" and view["active"] == ["b2", "c1"] and view["unfinished"] == []
    assert view["eta_s"] == 15.0  # c1's 5 s, then b2's 10 steps at 1 it/s
    assert view["name"] == "cat" and view["node_id"] == "5"
    jobs[3]["state"] = "cancelled"
    jobs[2].update(state="done")
    [view] = b.batch_views(jobs)
    assert view["state"] == "stopped" and view["unfinished"] == ["b2"] and view["eta_s"] is None


def test_batch_id_is_twelve_hex_digits_and_nothing_after(b):
    assert b.valid_batch_id("0123456789ab")
    assert not b.valid_batch_id("0123456789ab\n") and not b.valid_batch_id("0123456789AB")
    assert not b.valid_batch_id(None) and b.valid_batch_id(b.new_batch_id())
