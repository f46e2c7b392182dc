"""The embedding-input VLM: splicing, generation, LoRA, save/load; chat labels; the VQA evaluator."""

from __future__ import annotations

import json

import pytest
import torch

from datagen.text.corpus import world_corpus
from models.tiny_lm import build_tiny_lm, build_word_tokenizer
from models.vlm import EmbeddingVLM, build_vlm
from train.core.vlm_data import IGNORE, caption_example, chat_example, format_question, pad_examples
from train.unicorn.vqa_eval import build_world_vqa, choice_letter, load_vqa, normalize_answer, score


@pytest.fixture(scope="module")
def lm_dir(tmp_path_factory):
    return build_tiny_lm(tmp_path_factory.mktemp("lm"), texts=world_corpus(200), hidden=32, layers=1, heads=2)


def _batch(vlm, texts):
    ids = [vlm.tokenizer(vlm.expand_image_tokens(t), add_special_tokens=False)["input_ids"] for t in texts]
    return pad_examples([{"input_ids": i} for i in ids], vlm.tokenizer.pad_token_id, left=True)


def test_word_tokenizer_round_trips_game_and_json_text():
    tok = build_word_tokenizer(world_corpus(50))
    for text in ['Player 2 says: \\boxed{3}', '[{"type": "mc", "answer": "B"}]', "a small red metal cube."]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text


def test_projected_tokens_replace_image_positions(lm_dir):
    torch.manual_seed(0)
    vlm = build_vlm(lm_dir, embed_dim=16, num_visual_tokens=3)
    batch = _batch(vlm, ["<image> what color is the cube?"])
    emb = torch.randn(1, 16)
    spliced = vlm.embed_inputs(batch["input_ids"], image_embeds=emb)
    is_img = batch["input_ids"][0] == vlm.image_token_id
    assert int(is_img.sum()) == 3
    proj = vlm.projector(emb)[0]  # (K, H), repeated token
    assert torch.allclose(spliced[0, is_img], proj)
    text_rows = vlm.lm.get_input_embeddings()(batch["input_ids"])[0, ~is_img]
    assert torch.equal(spliced[0, ~is_img], text_rows)
    # the image changes the output distribution at the text positions
    out1 = vlm(batch["input_ids"], batch["attention_mask"], image_embeds=emb).logits
    out2 = vlm(batch["input_ids"], batch["attention_mask"], image_embeds=emb + 1).logits
    assert not torch.allclose(out1, out2)


def test_image_token_count_is_checked(lm_dir):
    vlm = build_vlm(lm_dir, embed_dim=16, num_visual_tokens=2)
    ids = vlm.tokenizer("<image> a cube", add_special_tokens=False, return_tensors="pt")["input_ids"]  # 1, not 2
    with pytest.raises(ValueError, match="exactly 2"):
        vlm.embed_inputs(ids, image_embeds=torch.zeros(1, 16))
    with pytest.raises(ValueError, match="no image_embeds"):
        vlm.embed_inputs(ids)


def test_split_tokens_are_distinct(lm_dir):
    vlm = build_vlm(lm_dir, embed_dim=16, num_visual_tokens=4, token_mode="split")
    tokens = vlm.projector(torch.randn(2, 16))
    assert tokens.shape == (2, 4, vlm.projector.width)
    assert not torch.allclose(tokens[:, 0], tokens[:, 1])


def test_batched_generation_matches_single(lm_dir):
    torch.manual_seed(0)
    vlm = build_vlm(lm_dir, embed_dim=16).eval()
    texts = ["<image> how many cubes are there?", "<image> what shape is the red object in the scene?"]
    emb = torch.randn(2, 16)
    batch = _batch(vlm, texts)
    both = vlm.generate(batch["input_ids"], batch["attention_mask"], image_embeds=emb, max_new_tokens=6,
                        do_sample=False, min_new_tokens=6)
    for i in range(2):
        one = _batch(vlm, [texts[i]])
        single = vlm.generate(one["input_ids"], one["attention_mask"], image_embeds=emb[i:i + 1], max_new_tokens=6,
                              do_sample=False, min_new_tokens=6)
        assert torch.equal(both[i], single[0])


@pytest.mark.parametrize("lora", [False, True])
def test_save_pretrained_round_trip(lm_dir, tmp_path, lora):
    torch.manual_seed(0)
    vlm = build_vlm(lm_dir, embed_dim=16, num_visual_tokens=2)
    if lora:
        vlm.apply_lora(r=4, alpha=8)
        vlm.set_trainable(projector=True, lm=True)
        trainable = [n for n, p in vlm.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n or n.startswith("projector") for n in trainable)
        for n, p in vlm.lm.named_parameters():  # make the adapter non-trivial before merging
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.5)
    vlm.eval()
    batch = _batch(vlm, ["<image> is there a red cube?"])
    emb = torch.randn(1, 16)
    ref = vlm(batch["input_ids"], batch["attention_mask"], image_embeds=emb).logits
    vlm.save_pretrained(tmp_path / "vlm")
    names = {p.name for p in (tmp_path / "vlm").iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "projector.safetensors", "vlm_config.json"} <= names
    back = EmbeddingVLM.from_pretrained(tmp_path / "vlm").eval()
    assert back.config.num_visual_tokens == 2 and back.image_token_id == vlm.image_token_id
    got = back(batch["input_ids"], batch["attention_mask"], image_embeds=emb).logits
    assert torch.allclose(ref, got, atol=1e-5)


def test_missing_folder_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="vlm_config.json"):
        EmbeddingVLM.from_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_vlm(str(tmp_path / "nope"), embed_dim=8)


def test_chat_example_labels_only_answers(lm_dir):
    vlm = build_vlm(lm_dir, embed_dim=16)
    tok = vlm.tokenizer
    ex = chat_example(tok, [("<image>\nwhat color is the cube?", "red"), ("how many spheres are there?", "two")])
    labelled = [t for t, lab in zip(ex["input_ids"], ex["labels"]) if lab != IGNORE]
    assert tok.decode(labelled) == "red<|end|>two<|end|>"
    assert ex["input_ids"][0] == tok.bos_token_id  # BOS first: the image is never the attention-sink position
    assert ex["input_ids"][1:] == tok(tok.apply_chat_template(
        [{"role": "user", "content": "<image>\nwhat color is the cube?"}, {"role": "assistant", "content": "red"},
         {"role": "user", "content": "how many spheres are there?"}, {"role": "assistant", "content": "two"}],
        tokenize=False), add_special_tokens=False)["input_ids"]
    cap = caption_example(tok, "<image>", "a red cube.")
    assert cap["input_ids"][:2] == [tok.bos_token_id, vlm.image_token_id]
    assert tok.decode([t for t, lab in zip(cap["input_ids"], cap["labels"]) if lab != IGNORE]) == "a red cube.<|end|>"


def test_vqa_scoring():
    assert choice_letter("B", 4) == "B" and choice_letter("(C) two", 4) == "C"
    assert choice_letter("A", 2) == "A" and choice_letter("none", 4) is None and choice_letter("E", 4) is None
    assert normalize_answer(" Red. ") == "red"
    assert score({"answer": "B", "choices": ["1", "2", "3", "4"]}, "B. 2")
    assert not score({"answer": "B", "choices": ["1", "2", "3", "4"]}, "A")
    assert score({"answer": "two"}, "Two.") and not score({"answer": "two"}, "three")
    assert format_question("q?", ["x", "y"]) == "q?\nA. x\nB. y\nAnswer with the option's letter."


def test_vqa_file_validation(tmp_path):
    path = build_world_vqa(tmp_path / "vqa", n_images=6, image_size=32)
    recs = load_vqa(path)
    assert recs and all(r["answer"] in "ABCD" for r in recs if r.get("choices"))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"image": "vqa/images/000000.png", "question": "q?"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: field 'answer'"):
        load_vqa(bad)
    bad.write_text(json.dumps({"image": "vqa/images/000000.png", "question": "q?", "answer": "E",
                               "choices": ["a", "b"]}) + "\n")
    with pytest.raises(ValueError, match="neither a choice nor a letter"):
        load_vqa(bad)
    bad.write_text(json.dumps({"image": "missing.png", "question": "q?", "answer": "a"}) + "\n")
    with pytest.raises(FileNotFoundError, match="missing.png"):
        load_vqa(bad)


@pytest.mark.parametrize("mix", ["short", "all"])
def test_unicorn_text_stage_mix(lm_dir, mix):
    """Stage "text": caption + questions -> answers; "short" drops reasoning items and the plain caption."""
    from train.unicorn.module import UnicornVLM

    m = UnicornVLM(stage="text", lm_path=str(lm_dir), clip_checkpoint=None, text_mix=mix)
    items = [{"type": "open", "question": "is there a cube?", "answer": "yes"},
             {"type": "reasoning", "question": "how many cubes are there? Think it through step by step.",
              "answer": "From left to right the scene shows a small red metal cube. So the answer is 1."},
             {"type": "mc", "question": "what color is the cube?", "answer": "B", "options": ["blue", "red"]}]
    caption = "there is one object: a small red metal cube."
    ex = m.examples({"caption": [caption], "items": [items]})
    tok = m.vlm.tokenizer
    answers = tok.decode(ex["labels"][0][ex["labels"][0] != IGNORE])
    assert "yes" in answers and "B" in answers
    assert ("From left to right" in answers) == (mix == "all")
    assert ex["input_ids"].shape[0] == (1 if mix == "short" else 2)  # "all": plus the caption as plain text
    assert caption in tok.decode(ex["input_ids"][0])  # the LM reads the caption in the first user turn
    with pytest.raises(ValueError, match="text_mix"):
        UnicornVLM(stage="text", lm_path=str(lm_dir), clip_checkpoint=None, text_mix="long")
