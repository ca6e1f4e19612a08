"""Cone scores and top-K column selection (unziplora/columns.py)."""

from __future__ import annotations

import pytest
import torch

from unziplora_pack.unziplora.columns import (
    ConeScores,
    columns_per_round,
    cone_scores,
    effective_mask,
    overlap_columns,
    rank_columns,
    select_columns,
)
from unziplora_pack.unziplora.dual_lora import DualLoRA, LoRAFactors


def _hand_layer() -> LoRAFactors:
    """out=3, in=3, rank 1; every number dyadic so float32 reproduces the hand computation exactly."""
    side = LoRAFactors(3, 3, 1)
    with torch.no_grad():
        side.down.copy_(torch.tensor([[1.0, 2.0, 0.0]]))  # A
        side.up.copy_(torch.tensor([[1.0], [0.5], [-1.0]]))  # B
        side.merger.copy_(torch.tensor([1.0, 0.5, 2.0]))  # m
    side.down.grad = torch.tensor([[0.125, -0.25, 0.5]])  # dA
    side.up.grad = torch.tensor([[0.25], [0.0], [0.0625]])  # dB
    return side


# By hand:  W = B A            = [[1, 2, 0], [0.5, 1, 0], [-1, -2, 0]]
#           dB A               = [[0.25, 0.5, 0], [0, 0, 0], [0.0625, 0.125, 0]]
#           B dA               = [[0.125, -0.25, 0.5], [0.0625, -0.125, 0.25], [-0.125, 0.25, -0.5]]
#           G = m * (dB A + B dA) = [[0.375, 0.25, 0.5], [0.03125, -0.0625, 0.125], [-0.125, 0.75, -1]]
#           C = W * G          = [[0.375, 0.5, 0], [0.015625, -0.0625, 0], [0.125, -1.5, 0]]
HAND_MAGNITUDE = [0.875, 0.078125, 1.625]


@pytest.mark.parametrize("threshold, counts, ranking", [
    (0.1, [2, 0, 2], [2, 0, 1]),  # density tie between 0 and 2: magnitude decides
    (0.2, [2, 0, 1], [0, 2, 1]),  # density beats the larger magnitude of column 2
    (0.375, [1, 0, 1], [2, 0, 1]),  # strict ">": the entry equal to the threshold does not count
])
def test_cone_scores_match_hand_computation(threshold, counts, ranking):
    scores = cone_scores(_hand_layer(), threshold)
    assert scores.count.tolist() == counts
    assert scores.magnitude.tolist() == HAND_MAGNITUDE
    assert torch.equal(scores.density, torch.tensor(counts, dtype=torch.float32) / 3)
    assert rank_columns(scores).tolist() == ranking


def test_cone_scores_missing_gradient_counts_as_zero():
    side = _hand_layer()
    side.down.grad = None  # only dB A remains: m * dB A = [[0.25, 0.5, 0], [0, 0, 0], [0.125, 0.25, 0]]
    scores = cone_scores(side, 0.0)
    # C = W * that = [[0.25, 1, 0], [0, 0, 0], [-0.125, -0.5, 0]]
    assert scores.magnitude.tolist() == [1.25, 0.0, 0.625]
    assert scores.count.tolist() == [2, 0, 2]


def test_cone_scores_from_autograd_use_the_factor_formula():
    torch.manual_seed(0)
    side = LoRAFactors(16, 10, 4)
    with torch.no_grad():
        side.merger.uniform_(0.2, 1.0)
    x = torch.randn(7, 16)
    (side.delta(x, masks_on=False) ** 2).sum().backward()
    scores = cone_scores(side, 1e-4)
    a, b, m = side.down.detach(), side.up.detach(), side.merger.detach()
    cone = ((side.up.grad @ a + b @ side.down.grad) * m[:, None] * (b @ a)).abs()
    torch.testing.assert_close(scores.magnitude, cone.sum(1))
    assert torch.equal(scores.count, (cone > 1e-4).sum(1))
    assert side.merger.grad is not None and side.up.grad is not None  # scoring reads, never clears


def _scores(count, magnitude, in_features=4) -> ConeScores:
    return ConeScores(torch.tensor(count), torch.tensor(magnitude, dtype=torch.float32), in_features)


def test_select_density_then_magnitude_then_index():
    s = _scores([1, 3, 3, 0, 3], [9.0, 1.0, 2.0, 5.0, 2.0])
    assert rank_columns(s).tolist() == [2, 4, 1, 0, 3]
    assert select_columns(s, 2).tolist() == [2, 4]
    assert select_columns(s, 3).tolist() == [2, 4, 1]
    assert select_columns(s, 0).tolist() == []
    assert select_columns(s, 9).tolist() == [2, 4, 1, 0, 3]


def test_select_full_ties_take_lowest_indices():
    s = _scores([0] * 6, [0.0] * 6)
    assert select_columns(s, 3).tolist() == [0, 1, 2]
    # large and tie-heavy: still deterministic, exactly k, ties by index
    g = torch.Generator().manual_seed(0)
    count = torch.randint(0, 3, (1000,), generator=g)
    mag = torch.randint(0, 4, (1000,), generator=g).float()
    big = ConeScores(count, mag, 8)
    picks = select_columns(big, 100)
    assert picks.numel() == 100 and picks.unique().numel() == 100
    expected = sorted(range(1000), key=lambda i: (-int(count[i]), -float(mag[i]), i))[:100]
    assert picks.tolist() == expected


def test_select_never_takes_excluded_columns():
    s = _scores([1, 3, 3, 0, 3], [9.0, 1.0, 2.0, 5.0, 2.0])
    exclude = torch.tensor([False, True, True, False, False])
    assert select_columns(s, 2, exclude).tolist() == [4, 0]
    assert select_columns(s, 2, exclude.float()).tolist() == [4, 0]  # a 0/1 mask buffer works as is
    # fewer than k allowed: all the allowed ones, best first
    only_two = torch.tensor([True, True, False, True, False])
    assert select_columns(s, 4, only_two).tolist() == [2, 4]
    assert select_columns(s, 4, torch.ones(5, dtype=torch.bool)).tolist() == []
    with pytest.raises(ValueError):
        select_columns(s, 2, torch.zeros(4, dtype=torch.bool))


def test_nan_column_is_not_ranked_first():
    side = _hand_layer()
    side.up.grad[0, 0] = float("nan")  # column 0's C turns NaN; a descending sort would put NaN first
    scores = cone_scores(side, 10.0)  # nothing passes: the magnitude alone decides
    assert scores.count.tolist() == [0, 0, 0]
    assert select_columns(scores, 1).tolist() == [2]


@pytest.mark.parametrize("out, ratio, k", [(640, 0.1, 64), (1280, 0.1, 128), (2048, 0.1, 204), (5, 0.1, 1),
                                           (100, 0.29, 29), (40, 0.1, 4), (7, 1.0, 7), (50, 0.0, 0)])
def test_columns_per_round(out, ratio, k):
    assert columns_per_round(out, ratio) == k


def test_columns_per_round_rejects_bad_ratio():
    for bad in (-0.1, 1.5):
        with pytest.raises(ValueError):
            columns_per_round(10, bad)


def test_effective_mask_and_overlap():
    dual = DualLoRA(4, 5, 2, content="relaxed", style="masked")
    dual.style.mask.copy_(torch.tensor([0.0, 1.0, 1.0, 0.0, 0.0]))
    dual.content.mask.copy_(torch.tensor([1.0, 0.0, 0.0, 0.0, 0.0]))  # ignored: the content side is relaxed
    assert effective_mask(dual.content).tolist() == [1.0] * 5
    assert overlap_columns(dual).tolist() == [False, True, True, False, False]
    shared = DualLoRA(4, 5, 2)
    shared.content.mask.copy_(torch.tensor([1.0, 1.0, 0.0, 0.0, 1.0]))
    shared.style.mask.copy_(torch.tensor([0.0, 1.0, 1.0, 0.0, 1.0]))
    assert overlap_columns(shared).tolist() == [False, True, False, False, True]
    single = DualLoRA(4, 5, 2, content="off", style=None)
    assert not overlap_columns(single).any()
