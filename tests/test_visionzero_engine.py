"""Vision-Zero game engine: turn order, visibility, batching, vote parsing, rewards, mixed tables."""

from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

from datagen.visionzero import NA, GameSetup, clue_rewards
from train.visionzero.engine import Generation, format_transcript, game_stats, play_games, split_clue


def _setup(spy: int, n_players: int = 4, rounds: int = 2, index: int = 0) -> GameSetup:
    a = Image.new("RGB", (16, 16), (10, 20, 30))
    b = Image.new("RGB", (16, 16), (200, 20, 30))
    return GameSetup(original=a, modified=b, n_players=n_players, spy=spy, rounds=rounds, index=index)


class Scripted:
    """A generate_fn that records every batch and answers from a script."""

    def __init__(self, votes: dict[tuple[int, int], str] | None = None):
        self.calls: list[list] = []
        self.votes = votes or {}

    def __call__(self, requests):
        self.calls.append(list(requests))
        out = []
        for r in requests:
            if r.stage == "clue":
                out.append(f"SECRET-g{r.game}-p{r.seat}-r{r.round} thinking. \\boxed{{clue g{r.game} p{r.seat} r{r.round}}}")
            else:
                out.append(Generation(self.votes.get((r.game, r.seat), "\\boxed{N/A}"), data={"seat": r.seat}))
        return out


@pytest.mark.parametrize("text, expected", [
    ("i see two objects. \\boxed{a red cube}", ("i see two objects.", "a red cube", True)),
    ("\\boxed{x} then \\boxed{a  blue\nsphere}", ("\\boxed{x} then", "a blue sphere", True)),
    ("no box at all", ("no box at all", "", False)),
    ("\\boxed{}", ("", "", False)),
])
def test_split_clue(text, expected):
    assert split_clue(text) == expected


def test_turn_order_visibility_and_batching():
    setups = [_setup(spy=2, index=0), _setup(spy=4, index=1), _setup(spy=1, index=2)]
    fn = Scripted()
    records = play_games(setups, fn)
    # one batch per (round, seat) covering every game, then ONE batch for every vote of every game
    assert len(fn.calls) == 2 * 4 + 1
    for k, batch in enumerate(fn.calls[:-1]):
        rnd, seat = divmod(k, 4)
        assert [r.game for r in batch] == [0, 1, 2]
        assert {(r.round, r.seat, r.stage) for r in batch} == {(rnd + 1, seat + 1, "clue")}
    votes = fn.calls[-1]
    assert len(votes) == 3 * 3 and {r.stage for r in votes} == {"decision"}
    assert all(r.seat != setups[r.game].spy for r in votes)  # the spy does not vote
    # images: the spy sees the modified image, everyone else (and every voter) the original
    for batch in fn.calls[:-1]:
        for r in batch:
            s = setups[r.game]
            assert r.image is (s.modified if r.seat == s.spy else s.original)
    # visibility: earlier public clues only; own reasoning only; never another player's reasoning
    for batch in fn.calls:
        for r in batch:
            secrets = set(re.findall(r"SECRET-g(\d+)-p(\d+)-r(\d+)", r.prompt))
            assert all(int(g) == r.game and int(p) == r.seat for g, p, _ in secrets), r.prompt
            rnd = r.round if r.stage == "clue" else 3
            assert {int(x) for _, _, x in secrets} == set(range(1, rnd))
            for g, p, rr in re.findall(r"clue g(\d+) p(\d+) r(\d+)", r.prompt):
                assert int(g) == r.game
                assert (int(rr), int(p)) < (rnd, r.seat if r.stage == "clue" else 99)
    # transcripts keep the clue and the private reasoning apart
    t0 = records[0].turns[0].turn
    assert t0.clue == "clue g0 p1 r1" and t0.reasoning == "SECRET-g0-p1-r1 thinking."


def test_vote_parsing_and_rewards_hand_computed():
    # spy = 2 of 4; civilians 1, 3, 4 vote: boxed 2 (right), "<answer>Player 2</answer>" (right),
    # then game 2: N/A, garbage, out of range
    votes = {(0, 1): "\\boxed{2}", (0, 3): "so <answer>Player 2</answer>", (0, 4): "\\boxed{3}",
             (1, 1): "\\boxed{N/A}", (1, 3): "I think it is the red one", (1, 4): "\\boxed{7}"}
    records = play_games([_setup(spy=2, index=0), _setup(spy=2, index=1)], Scripted(votes))
    r0, r1 = records
    assert r0.voters == [1, 3, 4] and r0.votes == [2, 2, 3]
    assert r1.votes == [NA, None, None]
    assert (r0.n_correct, r0.n_na, r0.n_invalid) == (2, 0, 0)
    assert (r1.n_correct, r1.n_na, r1.n_invalid) == (0, 1, 2)
    # clue rewards: v_s = 2, civilians' votes (seats 1, 3, 4) = 0, 1, 0 -> mean 1/3, gap 5/3
    b, lam, gap = 0.1, 0.1, 2 - 1 / 3
    exp = [b / 3 * gap - lam * (0 - 1 / 3), -b * gap, b / 3 * gap - lam * (1 - 1 / 3), b / 3 * gap - lam * (0 - 1 / 3)]
    assert r0.clue_rewards == pytest.approx(exp)
    assert sum(r0.clue_rewards) == pytest.approx(0.0)
    assert r0.clue_rewards == pytest.approx(clue_rewards([2, 2, 3], 2, 4))
    assert r0.decision_rewards == [1.0, 1.0, -1.0]
    assert r1.decision_rewards == [-0.5, -1.0, -1.0]
    assert r1.clue_rewards == pytest.approx([0.0] * 4)  # nobody received a valid vote
    st = game_stats(records)
    assert st["accuracy"] == pytest.approx(2 / 6) and st["na_rate"] == pytest.approx(1 / 6)
    assert st["invalid_rate"] == pytest.approx(2 / 6)
    text = format_transcript(r0)
    assert "spy = player 2" in text and "[private:" in text and "-> 2 (reward +1.00)" in text


def test_observer_mode_samples_g_votes():
    fn = Scripted()
    records = play_games([_setup(spy=3, index=0)], fn, decision="observer", observer_samples=5)
    last = fn.calls[-1]
    assert len(last) == 5 and {r.stage for r in last} == {"observer"} and {r.seat for r in last} == {0}
    assert all("SECRET" not in r.prompt for r in last)  # the observer sees no reasoning
    assert records[0].voters == [0] * 5 and records[0].votes == [NA] * 5


def test_mixed_players_grouped_per_policy():
    a, b = Scripted({(0, 1): "\\boxed{2}"}), Scripted()
    setups = [_setup(spy=2, index=0), _setup(spy=3, index=1)]
    play_games(setups, {"spy_pol": a, "civ_pol": b}, lambda s, seat: "spy_pol" if seat == s.spy else "civ_pol")
    assert all(r.seat == setups[r.game].spy for batch in a.calls for r in batch)
    assert all(r.seat != setups[r.game].spy for batch in b.calls for r in batch)
    assert len(b.calls[-1]) == 6  # all votes of both games in one batch


def test_mismatched_games_and_bad_output():
    # different player counts in one batch are played correctly
    setups = [_setup(spy=1, n_players=3, rounds=1, index=0), _setup(spy=4, n_players=5, rounds=2, index=1)]
    recs = play_games(setups, Scripted())
    assert [len(r.turns) for r in recs] == [3, 10] and [len(r.votes) for r in recs] == [2, 4]
    with pytest.raises(RuntimeError):
        play_games(setups, lambda reqs: ["x"])
    with pytest.raises(ValueError):
        play_games(setups, Scripted(), decision="nobody")


def test_real_prompts_render_for_world_games():
    from datagen.stream import sample_rng
    from datagen.visionzero import GameSetups, WorldPairs

    games = GameSetups(WorldPairs(n_objects=(2, 3)), n_civilians=4, rounds=2)
    setups = [games.setup(sample_rng(0, i), i) for i in range(2)]
    fn = Scripted()
    for path in (None, "configs/visionzero/prompts/game_toy.yaml"):
        recs = play_games(setups, fn, prompts_path=path)
        assert all(len(r.votes) == 4 for r in recs)
    assert np.mean([len(r.prompt) for r in fn.calls[-1]]) > 100
