"""VQA evaluation of an :class:`~models.vlm.EmbeddingVLM` on real images, from a JSONL file.

File format, one JSON object per line::

    {"image": "images/000001.png", "question": "what color is the cube?", "answer": "red"}
    {"image": "...", "question": "how many spheres are there?", "choices": ["0", "1", "2", "3"], "answer": "B"}

``image`` is relative to the JSONL's folder (or absolute). With ``choices`` the question is shown with
lettered options (:func:`train.core.vlm_data.format_question`) and scored by *choice accuracy*: the first
standalone letter of the reply must be the answer's letter (``answer`` may be the letter or the
option's text). Without ``choices``: *exact match* after normalisation (case, punctuation, spaces).
Optional ``type`` fields give a per-type breakdown. Any local benchmark exported to this format works.

Test-time image embeddings come from the VLM's vision tower (the same CLIP's image tower),
L2-normalised and, with ``center=True``, centred on the mean of a reference pool -- by default the
evaluation set's own images, as in the Unicorn paper.

:func:`build_world_vqa` writes the scene world's held-out benchmark in this format (rendered images,
seeds far from any training stream).
"""

from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from models.io import atomic_write_text
from train.core.vlm_data import LETTERS, format_question, generation_prompt, pad_examples, prompt_ids

_PUNCT = re.compile(r"[^\w\s]")
#: Questions per batch of greedy decoding in :func:`evaluate_vqa` / :func:`evaluate_text_reading`
#: (``UnicornVLM(eval_batch_size=...)`` in the configs): a memory/throughput knob (batches are left-padded
#: and masked, so answers do not depend on it beyond floating-point rounding).
DEFAULT_EVAL_BATCH_SIZE = 64


def normalize_answer(text: str) -> str:
    return " ".join(_PUNCT.sub(" ", text.lower()).split())


def choice_letter(reply: str, n_choices: int) -> str | None:
    """The first standalone option letter in ``reply`` (``"B"``, ``"B."``, ``"(B) ..."``), else None."""
    m = re.search(r"(?<![A-Za-z])([A-%s])(?![A-Za-z])" % LETTERS[n_choices - 1], reply)
    return m.group(1) if m else None


def load_vqa(path: str | os.PathLike) -> list[dict[str, Any]]:
    """Records of a VQA JSONL file, validated; errors name the file, line and field."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"VQA file {path} does not exist")
    records = []
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}:{lineno}: not valid JSON ({exc.msg})") from None
        for key in ("image", "question", "answer"):
            if not isinstance(rec.get(key), str) or not rec[key].strip():
                raise ValueError(f"{path}:{lineno}: field {key!r} must be a non-empty string")
        choices = rec.get("choices")
        if choices is not None:
            if not isinstance(choices, list) or not 2 <= len(choices) <= len(LETTERS):
                raise ValueError(f"{path}:{lineno}: 'choices' must be a list of 2-{len(LETTERS)} strings")
            ans = rec["answer"].strip()
            if ans in choices:
                rec["answer"] = LETTERS[choices.index(ans)]
            elif not (len(ans) == 1 and ans.upper() in LETTERS[:len(choices)]):
                raise ValueError(f"{path}:{lineno}: answer {ans!r} is neither a choice nor a letter "
                                 f"A-{LETTERS[len(choices) - 1]}")
            rec["answer"] = rec["answer"].strip().upper()
        image = Path(rec["image"])
        rec["image_path"] = str(image if image.is_absolute() else path.parent / image)
        if not os.path.isfile(rec["image_path"]):
            raise FileNotFoundError(f"{path}:{lineno}: image {rec['image_path']} does not exist")
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def score(record: dict[str, Any], reply: str) -> bool:
    if record.get("choices"):
        return choice_letter(reply, len(record["choices"])) == record["answer"]
    return normalize_answer(reply) == normalize_answer(record["answer"])


class _Tally:
    """Correct / total overall (``"all"``), per record type (multiple choice / open) and, for records
    with a ``qtype`` (the world's question family: colour, count, ...), per question family;
    shared by both evaluators."""

    def __init__(self) -> None:
        self.counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        self.qtype_counts: dict[str, list[int]] = defaultdict(lambda: [0, 0])

    def add(self, record: dict[str, Any], reply: str) -> tuple[bool, str]:
        ok = score(record, reply)
        kind = record.get("type") or ("choice" if record.get("choices") else "open")
        counters = [self.counts["all"], self.counts[kind]]
        if record.get("qtype"):
            counters.append(self.qtype_counts[record["qtype"]])
        for c in counters:
            c[0] += int(ok)
            c[1] += 1
        return ok, kind

    def summary(self) -> dict[str, Any]:
        def acc(counts: dict[str, list[int]]) -> dict[str, float]:
            return {k: c / max(n, 1) for k, (c, n) in counts.items()}

        by_type = acc(self.counts)
        out = {"accuracy": by_type.pop("all", 0.0), "by_type": by_type, "n": self.counts["all"][1]}
        if self.qtype_counts:
            out["by_qtype"] = acc(self.qtype_counts)
        return out


@torch.no_grad()
def evaluate_vqa(vlm, path: str | os.PathLike, *, preprocess=None, batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
                 max_new_tokens: int = 16, center: bool = True, reference_mean: torch.Tensor | None = None,
                 system: str | None = None, device: str | torch.device = "cpu", limit: int | None = None,
                 blind: bool = False) -> dict[str, Any]:
    """Accuracy of ``vlm`` on a VQA JSONL (greedy decoding); returns totals, per-type and predictions.

    ``blind=True`` feeds every question the same all-zero embedding (= the pool's mean image after
    centring) instead of its image: what the model answers from the question alone.
    """
    from PIL import Image

    tower = vlm.vision_tower
    if tower is None:
        raise ValueError("evaluate_vqa needs a VLM with a vision tower (real images at test time)")
    preprocess = preprocess or tower.preprocess
    records = load_vqa(path)[:limit]
    paths = sorted({r["image_path"] for r in records})
    pixels = {p: preprocess(Image.open(p).convert("RGB")) for p in paths}
    was_training = vlm.training
    vlm.eval()
    saved_mean = tower.image_mean.clone()
    if center:
        if reference_mean is not None:
            tower.image_mean.copy_(reference_mean.to(tower.image_mean))
        else:
            tower.set_reference_mean(torch.stack([pixels[p] for p in paths]).to(device))
    else:
        tower.image_mean.zero_()
    tok = vlm.tokenizer
    tally = _Tally()
    predictions = []
    try:
        for i in range(0, len(records), batch_size):
            chunk = records[i:i + batch_size]
            prompts = [vlm.expand_image_tokens(generation_prompt(
                tok, vlm.config.image_token + "\n" + format_question(r["question"], r.get("choices")), system=system))
                for r in chunk]
            batch = pad_examples([{"input_ids": prompt_ids(tok, p)} for p in prompts],
                                 tok.pad_token_id, left=True)
            images = torch.stack([pixels[r["image_path"]] for r in chunk]).to(device)
            visual = {"image_embeds": torch.zeros(len(chunk), vlm.config.embed_dim, device=device)} if blind \
                else {"images": images}
            out = vlm.generate(batch["input_ids"].to(device), batch["attention_mask"].to(device), **visual,
                               max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tok.eos_token_id)
            replies = tok.batch_decode(out, skip_special_tokens=True)
            for r, reply in zip(chunk, replies):
                ok, kind = tally.add(r, reply)
                predictions.append({"question": r["question"], "answer": r["answer"], "reply": reply.strip(),
                                    "correct": ok, "type": kind})
    finally:
        tower.image_mean.copy_(saved_mean)
        vlm.train(was_training)
    return {**tally.summary(), "predictions": predictions}


@torch.no_grad()
def evaluate_text_reading(lm, tokenizer, path: str | os.PathLike, *, batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
                          max_new_tokens: int = 16, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The LM alone, given each record's gold ``caption`` as text instead of the image: the ceiling a
    text-to-image transfer can reach with this LM (records without ``caption`` are skipped)."""
    records = [r for r in load_vqa(path) if r.get("caption")]
    tally = _Tally()
    for i in range(0, len(records), batch_size):
        chunk = records[i:i + batch_size]
        prompts = [generation_prompt(tokenizer, r["caption"] + "\n" + format_question(r["question"], r.get("choices")))
                   for r in chunk]
        batch = pad_examples([{"input_ids": prompt_ids(tokenizer, p)} for p in prompts],
                             tokenizer.pad_token_id, left=True)
        out = lm.generate(input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device),
                          max_new_tokens=max_new_tokens, do_sample=False, eos_token_id=tokenizer.eos_token_id,
                          pad_token_id=tokenizer.pad_token_id)
        replies = tokenizer.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
        for r, reply in zip(chunk, replies):
            tally.add(r, reply)
    return tally.summary()


def build_world_vqa(out_dir: str | os.PathLike, n_images: int = 300, *, seed: int = 987_654_321,
                    image_size: int = 64, n_objects: tuple[int, int] = (1, 3), questions_per_image: int = 2,
                    mc_fraction: float = 0.5, combos: list[str] | None = None,
                    avoid: list[str] | None = None) -> Path:
    """The world's held-out VQA benchmark: rendered PNGs + ``vqa.jsonl``; returns the JSONL path.

    Questions are the world's exact QA (count, colour, shape, material, size, existence, relation);
    a ``mc_fraction`` of them get 4 choices (the answer + 3 distractors from the question's answer set).
    Each record also keeps the scene's dense ``caption`` (for :func:`evaluate_text_reading`).
    ``combos``: every scene holds at least one of these colour-shape combinations (a compositional split,
    :mod:`datagen.world.holdout`); ``avoid``: no scene holds any of these.
    """
    import numpy as np

    from datagen.world import dense_caption, qa_pairs, render_scene, sample_scene
    from datagen.world.holdout import parse_combos, sample_scene_avoiding, sample_scene_with

    want, unwanted = parse_combos(combos, "build_world_vqa.combos"), parse_combos(avoid, "build_world_vqa.avoid")
    out = Path(out_dir)
    (out / "images").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n_images):
        if want or unwanted:
            scene = (sample_scene_with(rng, n_objects, want, unwanted) if want
                     else sample_scene_avoiding(rng, n_objects, unwanted))
        else:
            scene = sample_scene(rng, n_objects)
        name = f"images/{i:06d}.png"
        render_scene(scene, image_size, rng).save(out / name)
        for qa in qa_pairs(scene, rng, questions_per_image):
            rec: dict[str, Any] = {"image": name, "question": qa.question, "answer": qa.answer, "qtype": qa.qtype,
                                   "caption": dense_caption(scene)}
            wrong = sorted(set(qa.choices or ()) - {qa.answer})
            if len(wrong) >= 3 and rng.random() < mc_fraction:
                opts = [qa.answer] + [str(w) for w in rng.choice(wrong, size=3, replace=False)]
                opts = [opts[k] for k in rng.permutation(4)]
                rec.update(choices=opts, answer=LETTERS[opts.index(qa.answer)], type="mc")
            else:
                rec["type"] = "open"
            lines.append(json.dumps(rec))
    path = out / "vqa.jsonl"
    atomic_write_text(path, "\n".join(lines) + "\n")  # written last: its presence marks a complete benchmark
    return path
