"""Unicorn stages 1-2: bad LLM outputs are rejected with the right counted reason, good items kept."""

from __future__ import annotations

import json

import pytest

from datagen.unicorn import Dedup, PayloadError, clean_caption, parse_instructions, parse_json_payload, validate_caption

CAPTION = "there are two objects: a small red metal cube and a large blue rubber sphere."
MC = {"type": "mc", "question": "what color is the cube?", "options": ["blue", "red", "green", "gray"],
      "answer": "B"}
OPEN = {"type": "open", "question": "how many objects are there?", "answer": "2"}
REASON = {"type": "reasoning", "question": "which object is bigger, and why?",
          "answer": "The sphere is large while the cube is small, so the sphere is bigger."}
GOOD = [MC, OPEN, REASON]


def parse(text):
    return parse_instructions(text, CAPTION)


def test_good_items_kept_and_normalised():
    items, rejects = parse(json.dumps(GOOD))
    assert not rejects and [i["type"] for i in items] == ["mc", "open", "reasoning"]
    assert items[0] == {"type": "mc", "question": MC["question"], "answer": "B", "options": MC["options"]}
    assert "options" not in items[1]
    # tolerated variants: lowercase "(b)", options as a dict with "A." prefixes, type aliases, {"items": [...]}
    variant = {"type": "multiple_choice", "question": "q?", "answer": "(b)",
               "options": {"A": "A. blue", "B": "B. red", "C": "C. green", "D": "D. gray"}}
    items, rejects = parse(json.dumps({"items": [variant]}))
    assert not rejects and items[0]["answer"] == "B" and items[0]["options"] == ["blue", "red", "green", "gray"]


def test_prose_and_code_fences_around_json():
    body = json.dumps(GOOD, indent=2)
    for text in (f"Sure! Here are the questions:\n{body}\nLet me know if you need more.",
                 f"```json\n{body}\n```", f"Here you go:\n```\n{body}\n```\nEnjoy [really]."):
        items, rejects = parse(text)
        assert len(items) == 3 and not rejects, text
    # a bracketed aside before the payload is skipped, trailing commas are tolerated
    assert parse_json_payload('Note [see below] {"a": [1, 2,],}') == {"a": [1, 2]}
    # brackets inside strings do not confuse the scan
    assert parse_json_payload('x ["a ] b", "c"] y') == ["a ] b", "c"]


@pytest.mark.parametrize("text,reason", [
    (json.dumps(GOOD)[:-40], "truncated_json"),
    ("```json\n" + json.dumps(GOOD)[:50], "truncated_json"),
    ("The image shows a red cube and a blue sphere.", "not_json"),
    ("", "not_json"),
    (None, "not_json"),
    ("I'm sorry, but I can't help with that request.", "refusal"),
    ("As an AI language model, I cannot see images.", "refusal"),
    ('{"question": 1', "truncated_json"),
    ('"just a string"', "not_a_list"),
])
def test_whole_output_rejections(text, reason):
    items, rejects = parse(text)
    assert items == [] and rejects == {reason: 1}


def test_payload_error_reason():
    with pytest.raises(PayloadError) as err:
        parse_json_payload("[1, 2")
    assert err.value.reason == "truncated_json"


@pytest.mark.parametrize("bad,reason", [
    ({**MC, "answer": "E"}, "answer_letter"),
    ({**MC, "answer": "red"}, "answer_not_letter"),
    ({**MC, "answer": "A or B"}, "answer_not_letter"),
    ({**MC, "options": ["blue", "red", "green"]}, "mc_options"),
    ({**MC, "options": ["blue", "red", "green", "gray", "cyan"]}, "mc_options"),
    ({**MC, "options": ["blue", "red", "red", "gray"]}, "mc_options"),
    ({**MC, "options": "blue, red, green, gray"}, "mc_options"),
    ({k: v for k, v in MC.items() if k != "options"}, "missing_field"),
    ({k: v for k, v in OPEN.items() if k != "answer"}, "missing_field"),
    ({k: v for k, v in OPEN.items() if k != "type"}, "missing_field"),
    ({**OPEN, "question": "  "}, "empty_field"),
    ({**OPEN, "answer": ""}, "empty_field"),
    ({**OPEN, "type": "essay"}, "unknown_type"),
    ({**OPEN, "answer": "I'm sorry, I cannot answer that."}, "refusal"),
    ({**OPEN, "question": "what does the caption say about the cube?"}, "mentions_caption"),
    ({**OPEN, "answer": CAPTION}, "copies_caption"),
    ("not an object", "bad_item"),
])
def test_item_rejections_keep_the_good_ones(bad, reason):
    items, rejects = parse(json.dumps([MC, bad, OPEN]))
    assert rejects == {reason: 1}
    assert [i["question"] for i in items] == [MC["question"], OPEN["question"]]


def test_duplicates_counted_and_dedup_shared():
    dup = {**OPEN, "question": "How many objects are there??", "answer": "two"}  # same after normalisation
    items, rejects = parse(json.dumps([MC, OPEN, dup, REASON]))
    assert len(items) == 3 and rejects == {"duplicate": 1}
    shared = Dedup(threshold=None)
    parse_instructions(json.dumps([MC]), CAPTION, dedup=shared)
    items, rejects = parse_instructions(json.dumps([MC, OPEN]), CAPTION, dedup=shared)
    assert [i["type"] for i in items] == ["open"] and rejects == {"duplicate": 1}


def test_dedup_near_duplicates():
    d = Dedup(threshold=0.8, k=5)
    long = "a small red metal cube stands to the left of a large blue rubber sphere on a gray table"
    assert d.check_and_add(long) is None
    assert d.check_and_add(long.upper() + "!") == "duplicate"  # exact after normalisation
    assert d.check(long.replace("gray table", "grey table")) == "duplicate"  # near duplicate
    assert d.check("three green cylinders stand in a row behind a yellow sphere") is None
    assert len(d) == 1


@pytest.mark.parametrize("caption,reason", [
    ("", "empty"),
    (None, "empty"),
    ("I'm sorry, but I cannot describe this image.", "refusal"),
    ("As an AI, I do not see images; here is a guess about a red cube on a table.", "refusal"),
    ("A photo of a red cube.", "copy_of_seed"),
    ("a shiny red cube.", "too_short"),
    ("a large red metal sphere rests on a gray table next to a small blue rubber cylinder.", "missing_object"),
    ("two shiny red cubes rest on a gray table next to a small blue rubber cylinder.", None),
    ("a small shiny red metal cube rests on a gray table in the middle of an empty scene.", None),
])
def test_validate_caption(caption, reason):
    assert validate_caption("a photo of a red cube.", caption, min_words=8) == reason


def test_validate_caption_explicit_objects_and_cleaning():
    text = 'Caption: "A brown dog sleeps next to a wooden chair in a sunny living room with a rug."'
    cleaned = clean_caption(text)
    assert cleaned.startswith("A brown dog") and not cleaned.endswith('"')
    assert validate_caption("a dog.", cleaned, main_objects=["dog", "chair"]) is None
    assert validate_caption("a dog and a cat.", cleaned, main_objects=["dog", "cat"]) == "missing_object"
    assert validate_caption("a dog.", cleaned, main_objects=["living room"]) is None
    assert clean_caption("```\nA red cube.\n```") == "A red cube."
