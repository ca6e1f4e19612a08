"""The classifier gate's hand-checked half (bench/separation/handcheck.py) on constructed readings: labelled factors
are scored, "?" labels are left out and counted, an unreadable reading counts as wrong, and the shipped label files
match their sample sets. Nothing here reads a real run."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

if str(Path(__file__).resolve().parents[1]) not in sys.path:
    sys.path.append(str(Path(__file__).resolve().parents[1]))

from bench.separation import handcheck  # noqa: E402
from bench.separation import unnamed as W  # noqa: E402


class FixedHead(torch.nn.Module):
    """Returns the given logits row per image, whatever the image."""

    def __init__(self, logits):
        super().__init__()
        self.logits = torch.tensor(logits, dtype=torch.float32)

    def forward(self, rgb):
        return self.logits[: rgb.shape[0]]


def _onehot(index, classes, sure=True):
    row = [0.0] * classes
    row[index] = 10.0 if sure else 0.1  # 0.1 over 8 classes: top probability ~0.14, under the reject bar
    return row


def test_agreement_scores_labelled_factors_counts_unsure_and_rejects_unreadable():
    s, y = W.SHAPES.index, W.STYLES.index
    models = {
        "content": FixedHead([_onehot(s("cross"), 8), _onehot(s("circle"), 8), _onehot(s("tee"), 8, sure=False),
                              _onehot(s("ring"), 8)]),
        "style": FixedHead([_onehot(y("flat"), 8), _onehot(y("flat"), 8), _onehot(y(W.UNNAMED_STYLES[1]), 8),
                            _onehot(y(W.UNNAMED_STYLES[3]), 8)]),
    }
    labels = [("cross", "flat"), ("cross", "?"), ("tee", W.UNNAMED_STYLES[1]), ("?", "?")]
    out = handcheck.agreement(models, torch.zeros(4, 16, 16, 3), labels)
    # shape: image 0 right, image 1 read as circle, image 2 right class but below the reject bar -> wrong
    assert (out["content"]["right"], out["content"]["labelled"], out["content"]["hand_unsure"]) == (1, 3, 1)
    assert out["content"]["errors"] == {"cross read as circle": 1, "tee read as unreadable": 1}
    assert (out["style"]["right"], out["style"]["labelled"], out["style"]["hand_unsure"]) == (2, 2, 2)
    assert out["style"]["rate"] == 1.0


def test_every_shipped_label_file_matches_its_samples_and_the_worlds_classes():
    # each set is checked against the classes of the world version that drew it (a v3 label "slope" is valid in
    # v3's file whichever version is current)
    files = sorted(handcheck.FOLDER.glob("unnamed_v*_labels.json"))
    assert any(f.name == f"unnamed_v{W.VERSION}_gate_labels.json" for f in files), "the current world has no gate set"
    for f in files:
        version, which = f.name.split("_")[1][1:], f.name.split("_")[2]
        images, labels = handcheck.load(int(version), which)
        assert images.shape == (len(labels), 16, 16, 3) and 0 <= float(images.min()) and float(images.max()) <= 1
        if int(version) == W.VERSION:  # the sets the gate reads; a rejected world's set is kept as evidence only
            assert sum(a != "?" for a, _ in labels) >= 48 and sum(b != "?" for _, b in labels) >= 48


def test_a_label_outside_the_world_is_refused(tmp_path, monkeypatch):
    import json
    import shutil

    monkeypatch.setattr(handcheck, "FOLDER", tmp_path)
    src = Path(handcheck.__file__).parent / "handcheck"
    shutil.copy(src / f"unnamed_v{W.VERSION}_gate.npz", tmp_path)
    labels = json.loads((src / f"unnamed_v{W.VERSION}_gate_labels.json").read_text())
    labels["labels"][0] = ["star", "flat"]  # star is a shape of the named world, not of this one
    (tmp_path / f"unnamed_v{W.VERSION}_gate_labels.json").write_text(json.dumps(labels))
    with pytest.raises(ValueError, match="star/flat"):
        handcheck.load()


def test_the_gate_passes_at_the_rule_fails_under_it_and_reports_the_dev_set(monkeypatch):
    s, y = W.SHAPES.index, W.STYLES.index
    labels = [("cross", "flat")] * 20
    sets = {"gate": (torch.zeros(20, 16, 16, 3), labels), "dev": (torch.zeros(20, 16, 16, 3), labels)}
    monkeypatch.setattr(handcheck, "load", lambda version=W.VERSION, which="gate": sets.get(which))

    def models(wrong: int):
        content = [_onehot(s("circle" if i < wrong else "cross"), 8) for i in range(20)]
        return {"content": FixedHead(content), "style": FixedHead([_onehot(y("flat"), 8)] * 20)}

    at_rule = handcheck.gate(models(1))  # 19 of 20 = 0.95
    assert at_rule["pass"] and at_rule["content"]["rate"] == 0.95 and at_rule["dev"]["content"]["right"] == 19
    under = handcheck.gate(models(2))  # 18 of 20 = 0.90
    assert not under["pass"] and under["content"]["errors"] == {"cross read as circle": 2}
    sets.pop("gate")
    missing = handcheck.gate(models(0))
    assert not missing["pass"] and "no labelled gate set" in missing["missing"]
