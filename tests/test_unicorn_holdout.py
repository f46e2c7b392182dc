"""Compositional hold-out for the Unicorn toy (issue 18, item 1): held-out colour-shape combinations never reach
training text, evaluation scenes hold them, and the overlap statistics / answer priors read the files."""

from __future__ import annotations

import json

import pytest

from datagen.unicorn.stages import UnicornText
from datagen.world.holdout import TEST_COMBOS, VAL_COMBOS, parse_combos, scene_combos
from datagen.world.scene import Scene, WorldConfigError
from train.unicorn.overlap import TrainingText, combos_in, majority_baseline, overlap_stats, question_type
from train.unicorn.vqa_eval import build_world_vqa

HELD = list(VAL_COMBOS) + list(TEST_COMBOS)


def test_the_default_lists_are_disjoint_and_every_colour_and_shape_keeps_training_combos():
    val, test = parse_combos(VAL_COMBOS), parse_combos(TEST_COMBOS)
    assert not val & test and len(val) == len(test) == 4
    held = val | test
    from datagen.world import COLORS, SHAPES

    for c in COLORS:
        assert sum((c, s) not in held for s in SHAPES) >= 2
    for s in SHAPES:
        assert sum((c, s) not in held for c in COLORS) >= 4


def test_a_bad_combination_is_a_one_line_error_naming_the_field():
    with pytest.raises(WorldConfigError, match=r"UnicornText.holdout: 'red blob' is not '<colour> <shape>'"):
        UnicornText(holdout=["red blob"])


def test_training_text_never_holds_a_held_out_combination_and_the_eval_files_always_do(tmp_path):
    gen = UnicornText(stage="instructions", n_objects=(1, 2), holdout=HELD)
    train = TrainingText().add_stream(gen, seed=0, n=300)
    from datagen.generator import sample_rng

    held = parse_combos(HELD)
    texts = []
    for i in range(300):
        s = gen.generate(sample_rng(0, i), i)
        assert not scene_combos(Scene.from_dict(s["json"]["scene"])) & held
        texts += [s["caption"]] + [f"{it['question']} {it['answer']}" for it in s.get("items", [])]
    assert combos_in(texts, held) == 0

    test = build_world_vqa(tmp_path / "test", 20, n_objects=(1, 1), combos=list(TEST_COMBOS), avoid=list(VAL_COMBOS))
    recs = [json.loads(line) for line in test.read_text().splitlines()]
    assert all(combos_in([r["caption"]], parse_combos(TEST_COMBOS)) == 1 for r in recs)
    stats = overlap_stats(test, train)
    assert stats["captions"] == 0 and stats["triples"] == 0 and stats["n"] == len(recs)

    ind = build_world_vqa(tmp_path / "ind", 20, n_objects=(1, 1), avoid=HELD)  # in-distribution: training combos
    assert combos_in([json.loads(line)["caption"] for line in ind.read_text().splitlines()], held) == 0
    assert overlap_stats(ind, train)["captions"] > 0  # the same 1-object captions occur in training


def test_question_types_and_the_majority_baseline(tmp_path):
    assert [question_type(q) for q in ("how many cubes are there?", "what color is the sphere?",
                                       "what shape is the red object?", "is there a metal cube?",
                                       "is the red cube to the left of the blue sphere?")] == \
        ["count", "color", "shape", "exist", "relation"]
    train = TrainingText()
    train.add({"caption": "x", "items": [{"type": "open", "question": "what color is the cube?", "answer": "red"},
                                         {"type": "open", "question": "what color is it?", "answer": "red"},
                                         {"type": "mc", "question": "what color is the ball?", "answer": "B",
                                          "options": ["blue", "green", "red", "gray"]}]})
    assert train.majority() == {"color": "red"}  # two opens + nothing else: "red" twice, "green" once
    path = tmp_path / "v.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in [
        {"question": "what color is the cube?", "answer": "red", "type": "open"},
        {"question": "what color is the cube?", "answer": "C", "choices": ["blue", "gray", "red", "cyan"], "type": "mc"},
        {"question": "what color is the cube?", "answer": "blue", "type": "open"}]) + "\n")
    assert majority_baseline(path, train)["accuracy"] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_unicorn_toy_trains_on_the_split_and_reports_each_file(tmp_path):
    """``train.unicorn.toy.run`` end to end at toy-of-the-toy size: every stage's stream avoids the held-out
    combinations, the three files are scored (and with a constant image), overlap and priors sit beside them."""
    from models.clip import create_clip, save_open_clip_checkpoint
    from train.unicorn.toy import results_table, run

    clip = save_open_clip_checkpoint(create_clip("synthloop-tiny-rn64").model, tmp_path / "clip.pt",
                                     "synthloop-tiny-rn64")
    summary = run(str(tmp_path / "toy"), str(clip), variants=("mean_shift",), text_steps=2, align_steps=2,
                  instruct_steps=2, vqa_images=6, lm_hidden=32, lm_layers=1)
    assert summary["splits"] == ["val", "test", "in-distribution"]
    for split in summary["splits"]:
        r = summary["results"]["mean_shift"][split]
        assert r["n"] > 0 and 0 <= r["accuracy"] <= 1 and 0 <= r["blind"] <= 1
    over = {s: summary["baselines"][s]["overlap"] for s in summary["splits"]}
    assert over["val"]["captions"] == over["test"]["captions"] == 0
    assert over["val"]["triples"] == over["test"]["triples"] == 0
    table = results_table(summary)
    assert "### test" in table and "majority training answer" in table and "Seen in training text" in table
