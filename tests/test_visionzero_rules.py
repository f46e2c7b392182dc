"""Vision-Zero game rules (vote parsing, rewards, win rates) and the training side's RAE, group
normalisation and phase control, by hand-computed examples."""

from __future__ import annotations

import math

import pytest

from datagen.visionzero import (NA, civilians_win, clue_rewards, decision_rewards, observer_decision_rewards,
                                parse_vote, vote_stats, win_rate)
from train.visionzero.advantage import RoleAdvantage, group_normalize
from train.visionzero.phase import PhaseController

# --- vote parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    (r"The odd one is player 2. \boxed{2}", 2),
    (r"\boxed{Player 3}", 3),
    (r"\boxed{\text{Player 4}}", 4),  # nested braces
    (r"\boxed{ {5} }", 5),
    (r"Player 1 said \boxed{a red cube}; so I vote \boxed{3}", 3),  # the last box is the answer
    (r"\boxed{2} wait, no: \boxed{N/A}", NA),
    (r"\boxed{N/A}", NA),
    (r"\boxed{n/a}", NA),
    (r"\boxed{NA}", NA),
    (r"\boxed{\text{N/A}.}", NA),
    ("<answer>Player 3</answer>", 3),
    ("<answer>NA</answer>", NA),
    ("<answer>1</answer> then <answer>4</answer>", 4),
    (r"<answer>1</answer> \boxed{2}", 2),  # the box wins over the tag
    ("I think it is player 3", None),  # no box, no tag: invalid
    (r"\boxed{the one with the cube}", None),  # garbage
    (r"\boxed{0}", None),
    (r"\boxed{6}", None),  # out of range for 5 players
    (r"\boxed{player 12}", None),  # 12 is not read as 1 or 2
    (r"\boxed{Player 3 or Player 4}", 3),  # first number
    (r"\boxed{2.5}", None),
    (r"\boxed{3", None),  # unclosed box
    ("", None),
])
def test_parse_vote(text, expected):
    assert parse_vote(text, 5) == expected


def test_parse_vote_non_string():
    assert parse_vote(None, 5) is None  # type: ignore[arg-type]


# --- clue rewards -------------------------------------------------------------------------------------


def test_clue_rewards_hand_computed():
    # 4 civilians (seats 1-4) + spy (seat 5); votes [5, 5, 2, N/A]:
    # v_s = 2; v_c = [0, 1, 0, 0]; mean v̄_c = 0.25; gap v_s - v̄_c = 1.75
    # r_spy = -0.1 * 1.75 = -0.175
    # r_c1 = r_c3 = r_c4 = (0.1/4)*1.75 - 0.1*(0 - 0.25) = 0.04375 + 0.025 = 0.06875
    # r_c2 = 0.04375 - 0.1*(1 - 0.25) = -0.03125;  sum = -0.175 + 3*0.06875 - 0.03125 = 0
    r = clue_rewards([5, 5, 2, NA], spy=5, n_players=5)
    assert r == pytest.approx([0.06875, -0.03125, 0.06875, 0.06875, -0.175])
    assert sum(r) == pytest.approx(0.0, abs=1e-12)


def test_clue_rewards_spy_in_middle_and_invalid_votes():
    # spy = seat 2 of 4; votes [3, 3, None]: v_s = 0, v_c(1,3,4) = [0, 2, 0], mean 2/3, gap -2/3
    # r_spy = 0.1 * 2/3 = 0.0667; r_c1 = r_c4 = (0.1/3)(-2/3) - 0.1(-2/3) = -0.02222 + 0.06667 = 0.04444
    # r_c3 = -0.02222 - 0.1(4/3) = -0.15556
    r = clue_rewards([3, 3, None], spy=2, n_players=4)
    assert r == pytest.approx([0.044444, 0.066667, -0.155556, 0.044444], abs=1e-6)
    assert sum(r) == pytest.approx(0.0, abs=1e-12)


def test_clue_rewards_zero_sum_everywhere():
    for votes in ([], [NA, None, 7], [1, 1, 1, 1], [2, 3, 4, 5], [5, 1, 1, 3]):
        for spy in range(1, 6):
            assert sum(clue_rewards(votes, spy, 5, beta=0.3, lam=0.2)) == pytest.approx(0.0, abs=1e-12)
    assert clue_rewards([], 1, 5) == [0.0] * 5  # nobody voted: nothing to reward


def test_clue_rewards_bad_spy():
    with pytest.raises(ValueError):
        clue_rewards([1], spy=6, n_players=5)


# --- decision rewards -----------------------------------------------------------------------------------


def test_decision_rewards():
    assert decision_rewards([3, NA, 1, None, 3], spy=3) == [1.0, -0.5, -1.0, -1.0, 1.0]
    assert decision_rewards([True], spy=1) == [-1.0]  # a bool is not a seat


def test_observer_decision_rewards():
    # 0.3(2 f - 1) + 1.2 acc + 0.99 [acc > 0]
    r = observer_decision_rewards([2, 2, 1, NA], spy=2, format_ok=[True, False, True, False])
    assert r == pytest.approx([0.3 + 1.2 + 0.99, -0.3 + 1.2 + 0.99, 0.3, -0.3])
    with pytest.raises(ValueError):
        observer_decision_rewards([2], spy=2, format_ok=[])


# --- group normalisation ------------------------------------------------------------------------------


def test_group_normalize_equal_rewards_are_zero():
    for r in ([0.1, 0.1, 0.1], [-1.0] * 4, [1.0]):
        out = group_normalize(r)
        assert out == [0.0] * len(r) and not any(math.isnan(x) for x in out)
    assert group_normalize([]) == []
    assert group_normalize([1.0], ddof=1) == [0.0]  # sample std of one value is undefined: zero, not NaN


def test_group_normalize_values():
    # [1, -1, -1, -0.5]: mean -0.375; population var = (1.890625 + 0.390625*2 + 0.015625)/4 = 0.671875
    out = group_normalize([1.0, -1.0, -1.0, -0.5], eps=0.0)
    std = math.sqrt(0.671875)
    assert out == pytest.approx([1.375 / std, -0.625 / std, -0.625 / std, -0.125 / std])
    assert sum(out) == pytest.approx(0.0, abs=1e-12)
    assert sum(x * x for x in out) / 4 == pytest.approx(1.0)
    sample = group_normalize([1.0, -1.0, -1.0, -0.5], eps=0.0, ddof=1)  # TRL's torch.std convention
    assert sample[0] == pytest.approx(1.375 / math.sqrt(0.671875 * 4 / 3))


# --- role advantage estimation ------------------------------------------------------------------------


def test_rae_two_steps_by_hand():
    rae = RoleAdvantage()  # alpha 0.95, baselines start at 0
    # game 1: r_spy = 1, civ = [0, 2] (mean 1). Update first:
    # b_spy = 0.05 * 1 = 0.05; b_civ = 0.05 * 1 = 0.05 -> A_spy = 0.95, A_civ = [-0.05, 1.95]
    a_spy, a_civ = rae.step(1.0, [0.0, 2.0])
    assert (rae.b_spy, rae.b_civ) == pytest.approx((0.05, 0.05))
    assert a_spy == pytest.approx(0.95) and a_civ == pytest.approx([-0.05, 1.95])
    # game 2: r_spy = -1, civ = [1, 1]:
    # b_spy = 0.95*0.05 + 0.05*(-1) = -0.0025; b_civ = 0.95*0.05 + 0.05*1 = 0.0975
    # A_spy = -1 + 0.0025 = -0.9975; A_civ = 1 - 0.0975 = 0.9025
    a_spy, a_civ = rae.step(-1.0, [1.0, 1.0])
    assert (rae.b_spy, rae.b_civ) == pytest.approx((-0.0025, 0.0975))
    assert a_spy == pytest.approx(-0.9975) and a_civ == pytest.approx([0.9025, 0.9025])
    # a restored copy continues from the same baselines; advantages alone does not move them
    other = RoleAdvantage()
    other.load_state_dict(rae.state_dict())
    a_spy, a_civ = other.advantages(0.5, [0.0])
    assert a_spy == pytest.approx(0.5025) and a_civ == pytest.approx([-0.0975])
    assert other.state_dict() == rae.state_dict() and other.n_updates == 2
    with pytest.raises(ValueError):
        rae.update(0.0, [])


# --- phase controller ---------------------------------------------------------------------------------


def _fast(**kw) -> PhaseController:
    # rho = 0 makes the EMA equal the latest value, so scripted sequences read directly
    return PhaseController(rho=0.0, **kw)


def test_phase_hysteresis_and_min_stay():
    pc = _fast()
    assert pc.phase == "decision" and pc.clue_weight == 0.0
    # easy from the first iteration, but the phase must last K_min = 5 iterations
    phases = [pc.step(1.0, 0.0) for _ in range(5)]
    assert phases == ["decision"] * 4 + ["clue"]
    assert pc.history[-1]["switch"] == "threshold" and pc.clue_weight == 1.0
    # in the clue phase: error 0.3 < 0.4 and N/A 0.2 < 0.5 -> stay (no hysteresis flip)
    assert [pc.step(0.7, 0.2) for _ in range(8)] == ["clue"] * 8
    # N/A 0.5 -> back to decision at once (the clue phase already lasted >= 5 iterations)
    assert pc.step(0.9, 0.5) == "decision"
    # decision: acc 0.9 but N/A 0.15 > 0.1 -> stay
    assert [pc.step(0.9, 0.15) for _ in range(6)] == ["decision"] * 6
    # error >= 0.4 just after entering clue does not switch back before K_min
    assert pc.step(0.95, 0.05) == "clue"
    assert [pc.step(0.5, 0.0) for _ in range(5)] == ["clue"] * 4 + ["decision"]


def test_phase_patience_forces_switch():
    pc = _fast()
    # decision never gets easy enough: forced to clue after P = 20 iterations
    assert [pc.step(0.5, 0.3) for _ in range(20)] == ["decision"] * 19 + ["clue"]
    assert pc.history[-1]["switch"] == "patience"
    # clue where nothing triggers (error 0.2, N/A 0.1): forced back after 20 more
    assert [pc.step(0.8, 0.1) for _ in range(20)] == ["clue"] * 19 + ["decision"]


def test_phase_ema_order_and_defaults():
    pc = PhaseController()  # rho 0.95, start 0: EMAs update before the check
    pc.step(1.0, 0.2)
    assert pc.acc_ema == pytest.approx(0.05) and pc.na_ema == pytest.approx(0.01)
    assert pc.history[0]["acc_ema"] == pytest.approx(0.05) and pc.history[0]["phase"] == "decision"
    # with perfect play the un-debiased EMA cannot reach 0.9 within P, so patience leaves decision
    for _ in range(19):
        nxt = pc.step(1.0, 0.0)
    assert nxt == "clue" and pc.history[-1]["switch"] == "patience"
    deb = PhaseController(debias=True)
    assert [deb.step(1.0, 0.0) for _ in range(5)][-1] == "clue"  # bias-corrected EMA = 1 at once


def test_phase_alternate_mode():
    pc = PhaseController(mode="alternate")
    assert [pc.step(0.0, 1.0) for _ in range(4)] == ["clue", "decision", "clue", "decision"]
    with pytest.raises(ValueError):
        PhaseController(mode="sometimes")


def test_phase_resume_continues_identically():
    import random
    rnd = random.Random(0)
    seq = [(rnd.random(), rnd.random() * 0.6) for _ in range(60)]
    full = PhaseController(rho=0.5)
    ref = [full.step(a, n) for a, n in seq]
    first = PhaseController(rho=0.5)
    for a, n in seq[:23]:
        first.step(a, n)
    resumed = PhaseController(rho=0.5)
    resumed.load_state_dict(first.state_dict())
    assert [resumed.step(a, n) for a, n in seq[23:]] == ref[23:]
    assert resumed.history == full.history and resumed.state_dict() == full.state_dict()
    assert len(set(ref)) == 2  # the sequence did exercise both phases


# --- evaluation -----------------------------------------------------------------------------------------


def test_vote_stats_and_win_rate():
    games = [([5, 5, 2, NA], 5), ([1, NA, None], 1), ([3, 3], 2)]
    acc, na = vote_stats(games)
    assert acc == pytest.approx(3 / 9) and na == pytest.approx(2 / 9)
    assert vote_stats([]) == (0.0, 0.0)
    assert civilians_win([5, 5, 2, NA], 5, 5)  # 2 of 3 valid votes
    assert not civilians_win([5, 2, NA], 5, 5)  # 1 of 2: a tie is a spy win
    assert civilians_win([5, 2, 3], 5, 5, rule="plurality") is False  # shares the top count: a tie
    assert civilians_win([5, 5, 2, 3], 5, 5, rule="plurality") and not civilians_win([5, 5, 2, 3], 5, 5)
    assert not civilians_win([NA, None], 5, 5)  # no valid vote
    # game 1: 2 of 3 valid votes -> civilians; game 2: 1 of 1 valid -> civilians; game 3: 0 of 2 -> spy
    assert win_rate(games, 5) == pytest.approx(2 / 3)
    assert win_rate(games, 5, side="spy") == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        win_rate([], 5)
