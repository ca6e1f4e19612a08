"""The column-separation schedule and L_orth (unziplora/schedule.py) on synthetic dual-LoRA collections."""

from __future__ import annotations

import io

import pytest
import torch

from unziplora_pack.unziplora.columns import columns_per_round, effective_mask, overlap_columns
from unziplora_pack.unziplora.dual_lora import DualLoRA
from unziplora_pack.unziplora.roles import MODES, ModePreset
from unziplora_pack.unziplora.schedule import Action, ColumnSchedule, orth_loss, schedule_period

# a shared block, a content block, a style block, and blocks B-LoRA leaves out
BLOCKS = ["input_blocks.4.1", "middle_block.1", "output_blocks.0.1", "output_blocks.1.1", "output_blocks.3.1"]
IN, OUT, RANK = 12, 40, 4
K = columns_per_round(OUT, 0.1)  # 4


class FakeLoRA:
    """The slice of ContentStyleLoRA's interface the schedule uses, over hand-built DualLoRAs."""

    def __init__(self, mode: ModePreset, blocks=BLOCKS, seed: int = 0, twin_sides: bool = True):
        gen = torch.Generator().manual_seed(seed)
        self.mode = mode
        self._items = []
        for block in blocks:
            content, style = mode.sides_for_block(block)
            if content is None and style is None:
                continue
            for name in ("attn1.to_q", "attn2.to_v"):
                dual = DualLoRA(IN, OUT, RANK, content=content, style=style, init=mode.init, generator=gen)
                if twin_sides and dual.content is not None and dual.style is not None:
                    # identical twins get identical scores: an unconstrained style pick would copy content's
                    dual.style.load_state_dict(dual.content.state_dict())
                self._items.append((f"{block}.transformer_blocks.0.{name}", block, dual))
        self.targets = [torch.randn(5, OUT, generator=gen) for _ in self._items]

    def items(self):
        return iter(self._items)

    def set_masks_on(self, on: bool) -> None:
        for *_, dual in self._items:
            dual.masks_on = on

    def parameter_groups(self):
        groups = {"content": [], "style": [], "mergers": []}
        for *_, dual in self._items:
            for name, side in dual.sides():
                groups[name] += [side.down, side.up]
                groups["mergers"].append(side.merger)
        return groups

    def loss(self, step: int) -> torch.Tensor:
        x = torch.randn(5, IN, generator=torch.Generator().manual_seed(1000 + step))
        return sum(((dual(x) - t) ** 2).mean() for (*_, dual), t in zip(self._items, self.targets))


def make_optimizer(lora, merger_lr=5e-3):
    g = lora.parameter_groups()
    return torch.optim.AdamW([{"params": g["content"] + g["style"], "lr": 5e-2},
                              {"params": g["mergers"], "lr": merger_lr}], weight_decay=1e-4)


def train(lora, sched, steps, opt=None, start=0, observe=None):
    """The loop of training/loop.py (minus clipping); observe(g, stage, action) sees every stage."""
    opt = opt or make_optimizer(lora)
    for g in range(start, steps):
        loss = lora.loss(g)
        if sched.orth_active:
            loss = loss + orth_loss(lora)
        loss.backward()
        if observe:
            observe(g, "backward", None)
        action = sched.before_optimizer_step(g)
        if observe:
            observe(g, "before_step", action)
        opt.step()
        if observe:
            observe(g, "after_step", action)
        sched.after_optimizer_step()
        opt.zero_grad(set_to_none=True)
    return opt


def masked_sides(lora):
    return [(path, block, name, side) for path, block, dual in lora.items() for name, side in dual.sides()
            if side.mask_mode == "masked"]


def mergers(lora):
    return [side.merger for *_, dual in lora.items() for _, side in dual.sides()]


def test_period():
    assert schedule_period(600, 3) == 200
    assert schedule_period(12, 3) == 4
    assert schedule_period(7, 3) == 3
    assert schedule_period(3, 3) == 2  # t = 1 would never select
    sched = ColumnSchedule(FakeLoRA(MODES["unziplora"]), 600)
    assert [sched.action_for(g) for g in (0, 1, 2, 199, 200, 201, 202, 400, 401, 599)] == [
        "reset", "select", "overlap_only", "overlap_only", "reset", "select", "overlap_only", "reset", "select",
        "overlap_only"]
    with pytest.raises(ValueError):
        ColumnSchedule(FakeLoRA(MODES["unziplora"]), 1)


def test_schedule_reproduces_the_method_table():
    """S = 12, sample_times = 3 -> t = 4: resets at 0, 4, 8; selects at 1, 5, 9; overlap-only elsewhere."""
    lora = FakeLoRA(MODES["unziplora"])
    sched = ColumnSchedule(lora, 12, sample_times=3)
    assert sched.period == 4
    expected = ["reset", "select", "overlap_only", "overlap_only"] * 3
    seen = []

    def observe(g, stage, action):
        duals = [dual for *_, dual in lora.items()]
        if stage == "backward":
            # what the forward of step g saw: all columns right after a reset, masks from the select on
            phase = g % 4
            assert all(d.masks_on == (g >= 2 and phase != 1) for d in duals), g
            assert sched.orth_active == (g >= 2 and phase != 1), g
            for *_, name, side in masked_sides(lora):
                rows = side.up.grad.abs().sum(1) > 0
                if phase == 1:
                    assert rows.all(), (g, name)  # scores come from a forward with every column active
                elif g >= 2:
                    assert torch.equal(rows, side.mask > 0), (g, name)
            # frozen from the reset on: the select step's forward makes no merger gradient at all
            assert all((m.grad is None) == (phase == 1) for m in mergers(lora)), g
            return
        if stage != "before_step":
            return
        seen.append(action)
        on = action != "reset"
        assert sched.masks_on == on and all(d.masks_on == on for d in duals), g
        assert sched.mergers_frozen == (action == "reset"), g
        assert all(m.requires_grad == (action != "reset") for m in mergers(lora)), g
        assert sched.orth_active == on, g
        if action in ("reset", "select"):
            assert all(m.grad is None for m in mergers(lora)), g

    train(lora, sched, 12, observe=observe)
    assert seen == expected
    assert sched.rounds == 3
    sched.finish()
    assert sched.masks_on and all(dual.masks_on for *_, dual in lora.items())


@pytest.mark.parametrize("mode_name", ["unziplora", "column"])
def test_each_round_picks_exactly_k_into_a_growing_union(mode_name):
    mode = MODES[mode_name]
    lora = FakeLoRA(mode)
    sched = ColumnSchedule(lora, 12, sample_times=3)
    before = {}
    shared_rounds = []

    def observe(g, stage, action):
        if stage == "backward" and g % 4 == 1:
            before.update({(p, n): s.mask.clone() for p, _, n, s in masked_sides(lora)})
        if stage != "before_step" or action != "select":
            return
        picks = sched.last_picks
        assert set(picks) == {(p, n) for p, _, n, _ in masked_sides(lora)}
        for path, block, name, side in masked_sides(lora):
            idx = picks[(path, name)]
            assert idx.numel() == K and idx.unique().numel() == K, (path, name)
            union = before[(path, name)].clone()
            union[idx] = 1.0
            assert torch.equal(side.mask, union), (path, name)
            if name == "style" and mode.style_avoids_content(block):
                content_mask = next(d.content.mask for p, _, d in lora.items() if p == path)
                # content chose first this round: style avoids every column content holds now
                assert not (content_mask[idx] > 0).any(), path
                shared_rounds.append(path)

    train(lora, sched, 12, observe=observe)
    assert shared_rounds  # the avoidance was exercised
    for path, block, name, side in masked_sides(lora):
        held = int(side.mask.sum())
        assert K <= held <= 3 * K, (path, name, held)
        assert set(side.mask.unique().tolist()) <= {0.0, 1.0}
    # Only style yields: content may later take a column style already holds, so shared blocks can overlap.


def test_relaxed_sides_keep_all_columns_and_own_blocks_do_not_avoid():
    lora = FakeLoRA(MODES["unziplora"])
    sched = ColumnSchedule(lora, 12, sample_times=3)
    train(lora, sched, 12)
    sched.finish()
    roles = {"output_blocks.0.1": ("relaxed", "masked"), "output_blocks.1.1": ("masked", "relaxed"),
             "output_blocks.3.1": ("masked", "relaxed")}
    x = torch.randn(3, IN)
    for path, block, dual in lora.items():
        if block not in roles:
            continue
        assert (dual.content.mask_mode, dual.style.mask_mode) == roles[block]
        relaxed = dual.content if roles[block][0] == "relaxed" else dual.style
        masked = dual.style if relaxed is dual.content else dual.content
        assert torch.equal(effective_mask(relaxed), torch.ones(OUT))
        assert torch.equal(relaxed.column_scale(True), relaxed.merger)
        assert (relaxed.delta(x, True).abs().sum(0) > 0).all()  # every column contributes with masks on
        # the masked side got its K per round although the relaxed side "holds" every column
        assert K <= int(masked.mask.sum()) <= 3 * K
        assert torch.equal(overlap_columns(dual), masked.mask > 0)


def test_merger_gradients_only_on_the_overlap_between_selections():
    lora = FakeLoRA(MODES["unziplora"])
    sched = ColumnSchedule(lora, 12, sample_times=3)
    checked = {"off": 0, "kept": 0}
    pre = {}

    def observe(g, stage, action):
        if stage == "backward":
            pre.clear()
            pre.update({id(m): m.grad.clone() for m in mergers(lora) if m.grad is not None})
        if stage != "before_step" or action != "overlap_only":
            return
        for *_, dual in lora.items():
            keep = overlap_columns(dual)
            for _, side in dual.sides():
                grad, before = side.merger.grad, pre[id(side.merger)]
                assert not grad[~keep].any(), g
                assert torch.equal(grad[keep], before[keep]), g
                checked["off"] += int(before[~keep].ne(0).sum())
                checked["kept"] += int(before[keep].ne(0).sum())

    train(lora, sched, 12, observe=observe)
    assert checked["off"] > 0 and checked["kept"] > 0  # something was zeroed and something kept


def test_frozen_mergers_do_not_move_across_adamw_steps():
    lora = FakeLoRA(MODES["unziplora"])
    sched = ColumnSchedule(lora, 12, sample_times=3)
    snap = {}
    moved_on_overlap = []

    def observe(g, stage, action):
        if stage == "before_step":
            snap.clear()
            snap.update({id(m): m.detach().clone() for m in mergers(lora)})
        if stage != "after_step":
            return
        if action in ("reset", "select"):
            for m in mergers(lora):
                assert torch.equal(m, snap[id(m)]), (g, action)
        else:
            moved_on_overlap.append(any(not torch.equal(m, snap[id(m)]) for m in mergers(lora)))

    opt = train(lora, sched, 12, observe=observe)
    assert all(moved_on_overlap)
    # the second and third resets came with Adam momentum in place, so a zeroed gradient would have moved them
    assert any(opt.state[m]["exp_avg"].abs().sum() > 0 for m in mergers(lora) if m in opt.state)


def test_mergers_are_clamped_after_every_optimizer_step():
    lora = FakeLoRA(MODES["unziplora"])
    sched = ColumnSchedule(lora, 12, sample_times=3)
    escaped = []

    def observe(g, stage, action):
        if stage == "after_step":
            escaped.append(any(((m < 0) | (m > 1)).any() for m in mergers(lora)))
        elif stage == "backward":
            assert all(((m >= 0) & (m <= 1)).all() for m in mergers(lora)), g

    train(lora, sched, 12, opt=make_optimizer(lora, merger_lr=0.5), observe=observe)
    assert any(escaped)  # the big merger lr pushed some outside, and the clamp pulled them back
    with torch.no_grad():
        m = mergers(lora)[0]
        m.copy_(torch.linspace(-1.0, 2.0, OUT))
    sched.after_optimizer_step()
    assert m.min() == 0.0 and m.max() == 1.0


def _dual(content_mode, style_mode, m_c, M_c, m_s, M_s):
    dual = DualLoRA(2, 4, 1, content=content_mode, style=style_mode)
    with torch.no_grad():
        dual.content.merger.copy_(torch.tensor(m_c))
        dual.content.mask.copy_(torch.tensor(M_c))
        dual.style.merger.copy_(torch.tensor(m_s))
        dual.style.mask.copy_(torch.tensor(M_s))
    return dual


class ListLoRA:
    def __init__(self, duals, mode=MODES["unziplora"]):
        self.mode = mode
        self._items = [(f"layer{i}", "input_blocks.4.1", d) for i, d in enumerate(duals)]

    def items(self):
        return iter(self._items)

    def set_masks_on(self, on):
        for *_, d in self._items:
            d.masks_on = on


def test_orth_loss_matches_hand_computation():
    shared = _dual("masked", "masked", [1.0, 0.5, 0.25, 1.0], [1.0, 1.0, 0.0, 0.0],
                   [0.5, 1.0, 1.0, 1.0], [0.0, 1.0, 1.0, 0.0])  # products [0, .5, 0, 0] -> .125
    content_block = _dual("relaxed", "masked", [1.0, 1.0, 0.5, 0.5], [0.0, 0.0, 0.0, 0.0],  # relaxed: M = 1
                          [1.0, 0.0, 1.0, 1.0], [1.0, 1.0, 0.0, 1.0])  # products [1, 0, 0, .5] -> .375
    unmasked = _dual("off", "off", [1.0] * 4, [0.0] * 4, [1.0] * 4, [0.0] * 4)  # not counted (would add 1)
    lora = ListLoRA([shared, content_block, unmasked])
    loss = orth_loss(lora, lam=0.5)
    assert loss.item() == pytest.approx(0.5 * (0.125 + 0.375) / 2)  # a mean over layers, not a sum
    assert orth_loss(lora, lam=1.0).item() == pytest.approx(0.25)
    loss.backward()
    # d/dm_c of .5 * mean_layers mean_cols: .5 / 2 / 4 * m_s M_s M_c
    assert shared.content.merger.grad.tolist() == pytest.approx([0.0, 0.0625, 0.0, 0.0])
    assert content_block.content.merger.grad.tolist() == pytest.approx([0.0625, 0.0, 0.0, 0.0625])
    assert unmasked.content.merger.grad is None
    assert orth_loss(ListLoRA([unmasked])).item() == 0.0


def test_state_dict_round_trip_resumes_identically():
    def fresh():
        lora = FakeLoRA(MODES["unziplora"], seed=3)
        return lora, ColumnSchedule(lora, 12, sample_times=3)

    lora_a, sched_a = fresh()
    opt_a = train(lora_a, sched_a, 7)  # stops inside round 2, after its selection
    buf = io.BytesIO()
    torch.save({"schedule": sched_a.state_dict(), "lora": {k: v for p, _, d in lora_a.items()
                                                            for k, v in _params(p, d).items()},
                "opt": opt_a.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # the trainer loads checkpoints weights-only

    lora_b, sched_b = fresh()
    with torch.no_grad():
        for p, _, d in lora_b.items():
            for k, v in _params(p, d).items():
                v.copy_(saved["lora"][k])
        for *_, d in lora_b.items():  # the masks must come from the schedule state
            for _, side in d.sides():
                side.mask.zero_()
    sched_b.load_state_dict(saved["schedule"])
    opt_b = make_optimizer(lora_b)
    opt_b.load_state_dict(saved["opt"])
    assert sched_b.rounds == 2 and sched_b.masks_on and not sched_b.mergers_frozen and sched_b.orth_active
    for (_, _, da), (_, _, db) in zip(lora_a.items(), lora_b.items()):
        assert db.masks_on == da.masks_on
        for (_, sa), (_, sb) in zip(da.sides(), db.sides()):
            assert torch.equal(sa.mask, sb.mask) and sb.merger.requires_grad == sa.merger.requires_grad

    train(lora_a, sched_a, 12, opt=opt_a, start=7)
    train(lora_b, sched_b, 12, opt=opt_b, start=7)
    for (_, _, da), (_, _, db) in zip(lora_a.items(), lora_b.items()):
        for (_, sa), (_, sb) in zip(da.sides(), db.sides()):
            assert torch.equal(sa.mask, sb.mask)
            assert torch.equal(sa.merger, sb.merger) and torch.equal(sa.up, sb.up)

    other = ColumnSchedule(FakeLoRA(MODES["column"]), 12)
    with pytest.raises(ValueError):
        other.load_state_dict(saved["schedule"])  # different masked sides
    with pytest.raises(ValueError):
        ColumnSchedule(FakeLoRA(MODES["naive"]), 12).load_state_dict(saved["schedule"])


def test_state_dict_restores_a_frozen_window():
    lora = FakeLoRA(MODES["unziplora"])
    sched = ColumnSchedule(lora, 12, sample_times=3)
    train(lora, sched, 5)  # the last action was the reset at g = 4
    state = sched.state_dict()
    assert state["mergers_frozen"] and not state["masks_on"] and not state["orth_active"]
    lora2 = FakeLoRA(MODES["unziplora"])
    sched2 = ColumnSchedule(lora2, 12, sample_times=3)
    sched2.load_state_dict(state)
    assert all(not m.requires_grad for m in mergers(lora2))
    assert not any(d.masks_on for *_, d in lora2.items()) and not sched2.orth_active


def _params(path, dual):
    return {f"{path}.{n}.{k}": v for n, side in dual.sides() for k, v in side.named_parameters()}


@pytest.mark.parametrize("mode_name", ["prompt", "naive", "blora"])
def test_schedule_is_inert_without_column_separation(mode_name):
    lora = FakeLoRA(MODES[mode_name])
    assert lora._items  # blora keeps output_blocks.0.1 / 1.1
    sched = ColumnSchedule(lora, 12, sample_times=3)
    assert not sched.active
    pre = {}
    values = {}

    def observe(g, stage, action):
        if stage == "backward":
            pre.clear()
            pre.update({id(m): m.grad.clone() for m in mergers(lora)})
            assert not sched.orth_active and orth_loss(lora).item() == 0.0
        elif stage == "before_step":
            assert action == "idle"
            assert all(torch.equal(m.grad, pre[id(m)]) and m.requires_grad for m in mergers(lora))
            assert not any(d.masks_on for *_, d in lora.items())
        else:
            values.update({id(m): m.detach().clone() for m in mergers(lora)})

    train(lora, sched, 12, opt=make_optimizer(lora, merger_lr=0.5), observe=observe)
    sched.finish()
    assert not any(d.masks_on for *_, d in lora.items())
    assert all(not s.mask.any() for *_, d in lora.items() for _, s in d.sides())
    # no clamping either: the schedule does not touch mergers in these modes
    assert all(torch.equal(m, values[id(m)]) for m in mergers(lora))
    assert sched.action_for(0) is Action.IDLE
    state = sched.state_dict()
    assert state["masks"] == {}
    ColumnSchedule(FakeLoRA(MODES[mode_name]), 12).load_state_dict(state)

