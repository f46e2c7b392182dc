"""Vision-Zero image pairs, game setups and prompt visibility rules."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from datagen.stream import GeneratorStream, take
from datagen.visionzero import (ChartPairs, FolderPairs, GameSetup, GameSetups, Turn, WorldPairs, render_clue_prompt,
                                render_decision_prompt, render_observer_prompt, visible_view)
from datagen.world import Scene
from datagen.world.scene import RADIUS


def _px(im: Image.Image) -> np.ndarray:
    return np.asarray(im, dtype=np.int16)


# --- world pairs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["replace_shape", "replace_color", "replace_shape_color"])
def test_world_pair_only_edited_objects_change(kind):
    size = 64
    src = WorldPairs(size=size, kinds=(kind,), k=2)
    for seed in range(3):
        p = src.pair(np.random.default_rng(seed))
        assert p["source"] == "world" and p["edit"]["kind"] == kind
        orig = Scene.from_dict(p["meta"]["original_scene"]).objects
        mod = Scene.from_dict(p["meta"]["modified_scene"]).objects
        changed = {c["index"] for c in p["edit"]["changes"]}
        assert len(changed) == 2 and len(orig) == len(mod)
        for i, (a, b) in enumerate(zip(orig, mod)):
            if i not in changed:
                assert a == b
            else:
                assert (a.x, a.y, a.size, a.material) == (b.x, b.y, b.size, b.material)  # in place
                for c in (c for c in p["edit"]["changes"] if c["index"] == i):
                    assert a.attr(c["field"]) == c["from"] != c["to"] == b.attr(c["field"])
        # the images differ, and only inside the edited objects' bounding discs (+2 px of anti-aliasing)
        diff = np.abs(_px(p["original"]) - _px(p["modified"])).sum(-1) > 0
        assert diff.any()
        yy, xx = (np.mgrid[0:size, 0:size] + 0.5) / size
        inside = np.zeros_like(diff)
        for i in changed:
            o = orig[i]
            inside |= (xx - o.x) ** 2 + (yy - o.y) ** 2 <= (RADIUS[o.size] + 2 / size) ** 2
        assert not (diff & ~inside).any()


def test_world_pair_blank_spy_and_determinism():
    src = WorldPairs(size=48, blank_spy=True)
    p = src.pair(np.random.default_rng(7))
    assert p["edit"]["kind"] == "blank" and p["meta"]["modified_scene"] == {"objects": []}
    mod = _px(p["modified"])
    assert (mod == mod[:, :1]).all()  # background only: every row is one tone (vertical gradient)
    assert (_px(p["original"]) != mod).any()
    q = src.pair(np.random.default_rng(7))
    assert q["original"].tobytes() == p["original"].tobytes() and q["edit"] == p["edit"]
    with pytest.raises(ValueError):
        WorldPairs(kinds=("add",))


# --- folder pairs -----------------------------------------------------------------------------------------


def _img(path, color):
    Image.new("RGB", (16, 16), color).save(path)


def test_folder_pairs_matched(tmp_path):
    _img(tmp_path / "cat_original.png", "red")
    _img(tmp_path / "cat_modified.png", "blue")
    _img(tmp_path / "dog_original.jpg", "green")
    _img(tmp_path / "dog_modified.png", "white")
    (tmp_path / "dog_edit.json").write_text('{"kind": "replace", "what": "collar"}')
    (tmp_path / "README.txt").write_text("ignored")
    src = FolderPairs(str(tmp_path), size=32)
    assert src.names == ["cat", "dog"] and len(src) == 2
    seen = {}
    for seed in range(20):
        p = src.pair(np.random.default_rng(seed))
        assert p["original"].size == (32, 32) and p["original"].mode == "RGB" and p["source"] == "folder"
        seen[p["meta"]["name"]] = p
    assert seen["dog"]["edit"] == {"kind": "replace", "what": "collar"}
    assert seen["cat"]["edit"] == {"kind": "folder", "name": "cat"}
    assert seen["cat"]["original"].getpixel((0, 0)) == (255, 0, 0)


def test_folder_pairs_unmatched_error_names_files(tmp_path):
    _img(tmp_path / "cat_original.png", "red")
    _img(tmp_path / "dog_modified.png", "red")
    _img(tmp_path / "bird.png", "red")
    with pytest.raises(ValueError) as e:
        FolderPairs(str(tmp_path))
    for name in ("cat_original.png", "dog_modified.png", "bird.png"):
        assert name in str(e.value)
    with pytest.raises(ValueError, match="not a directory"):
        FolderPairs(str(tmp_path / "missing"))


# --- chart pairs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("swap", ["values", "labels"])
def test_chart_pairs_differ_and_are_deterministic(swap):
    src = ChartPairs(size=96, swap=swap)
    p = src.pair(np.random.default_rng(3))
    q = src.pair(np.random.default_rng(3))
    assert p["original"].size == (96, 96) and p["original"].mode == "RGB"
    assert p["original"].tobytes() == q["original"].tobytes() and p["modified"].tobytes() == q["modified"].tobytes()
    assert p["original"].tobytes() != p["modified"].tobytes()
    m = p["meta"]
    assert 4 <= len(m["values"]) <= 6 and len(set(m["values"])) == len(m["values"])
    assert p["edit"]["kind"] == f"swap_{swap}" and len(p["edit"]["changes"]) == 2
    field = "values" if swap == "values" else "labels"
    i, j = (c["index"] for c in p["edit"]["changes"])
    expect = list(m[field])
    expect[i], expect[j] = expect[j], expect[i]
    assert m[f"modified_{field}"] == expect


# --- setups -----------------------------------------------------------------------------------------------


def test_setups_deterministic_and_spy_in_range():
    gen = GameSetups(WorldPairs(size=32, n_objects=(3, 4)), n_civilians=4, rounds=2)
    stream = GeneratorStream(gen, seed=11)
    a, b = take(stream, 12), take(GeneratorStream(gen, seed=11), 12)
    spies = set()
    for s, t in zip(a, b):
        assert gen.validate(s) is None
        g = GameSetup.from_sample(s)
        assert g.n_players == 5 and g.rounds == 2 and 1 <= g.spy <= 5
        assert s["json"] == t["json"] and s["image_modified"].tobytes() == t["image_modified"].tobytes()
        assert g.image_for(g.spy) is g.modified and all(g.image_for(c) is g.original for c in g.civilians)
        spies.add(g.spy)
    assert len(spies) >= 3  # seats are drawn, not fixed
    bad = dict(a[0], image_modified=a[0]["image_original"])
    assert "cannot be found" in gen.validate(bad)
    with pytest.raises(ValueError):
        GameSetups(n_civilians=1)


# --- prompts: visibility rules ------------------------------------------------------------------------------


def _setup(spy=3):
    im = Image.new("RGB", (8, 8))
    return GameSetup(original=im, modified=im, n_players=4, spy=spy, rounds=2)


TRANSCRIPT = [Turn(s, r, f"CLUE-{s}-{r}", f"THINK-{s}-{r}") for r in (1, 2) for s in (1, 2, 3, 4)]


def test_clue_prompt_visibility():
    g = _setup(spy=3)
    public, own = visible_view(TRANSCRIPT, seat=2, rnd=2)
    text = render_clue_prompt(g, 2, 2, public, own)
    # every earlier clue: all of round 1 and seat 1 of round 2; nothing later
    for s, r in [(1, 1), (2, 1), (3, 1), (4, 1), (1, 2)]:
        assert f"CLUE-{s}-{r}" in text
    for s, r in [(2, 2), (3, 2), (4, 2)]:
        assert f"CLUE-{s}-{r}" not in text
    assert "THINK-2-1" in text  # its own earlier reasoning
    assert "THINK" not in text.replace("THINK-2-1", "")  # never another player's reasoning
    assert "You are a civilian" in text and "You are the spy" not in text
    spy_text = render_clue_prompt(g, 3, 1, visible_view(TRANSCRIPT, 3, 1)[0])
    assert "You are the spy" in spy_text and "CLUE-2-1" in spy_text and "CLUE-3-1" not in spy_text
    assert "THINK" not in spy_text
    first = render_clue_prompt(g, 1, 1)
    assert "(none yet)" in first


def test_clue_prompt_refuses_what_a_player_must_not_see():
    g = _setup()
    with pytest.raises(ValueError, match="not been spoken"):
        render_clue_prompt(g, 2, 1, [Turn(3, 1, "later clue")])
    with pytest.raises(ValueError, match="reasoning of player 1"):
        render_clue_prompt(g, 2, 2, [], [Turn(1, 1, "c", "someone else's thoughts")])
    with pytest.raises(ValueError, match="no own reasoning"):
        render_clue_prompt(g, 2, 1, [], ["from the future"])
    # full turns in public_clues are fine: only their clue text is shown
    text = render_clue_prompt(g, 2, 2, TRANSCRIPT[:5], [{"seat": 2, "round": 1, "clue": "c", "reasoning": "MINE"}])
    assert "MINE" in text and "THINK" not in text
    with pytest.raises(ValueError):
        render_clue_prompt(g, 5, 1)  # no such seat


def test_decision_and_observer_prompts():
    g = _setup(spy=3)
    public, own = visible_view(TRANSCRIPT, seat=1, rnd=g.rounds + 1)
    text = render_decision_prompt(g, 1, public, own)
    assert all(f"CLUE-{s}-{r}" in text for s in (1, 2, 3, 4) for r in (1, 2))
    assert "THINK-1-1" in text and "THINK-1-2" in text and "THINK-2" not in text
    assert r"\boxed{N/A}" in text and r"\boxed{2}" in text
    with pytest.raises(ValueError, match="spy does not vote"):
        render_decision_prompt(g, 3, public)
    obs = render_observer_prompt(g, TRANSCRIPT)
    assert "CLUE-4-2" in obs and "THINK" not in obs
