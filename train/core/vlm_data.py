"""Token-level examples for the VLM trainers: chat turns -> ids + labels masked to the answers.

* :func:`chat_example` renders turns with the tokenizer's own chat template and finds each
  assistant span by rendering the conversation prefix with ``add_generation_prompt=True`` (works
  for any template whose prefixes are prefixes of the full text, which chat templates are built
  for). Only assistant tokens (and the template's end-of-turn marker after them) get labels.
* :func:`caption_example` is stage A's plain template: ``<image>`` + caption + EOS, loss on the caption.
* Examples and prompts start with BOS (:func:`with_bos`) so that the image is never at position 0.
* :func:`pad_examples` right-pads for training (``left=True`` for generation prompts).
* :func:`format_question` is the one place a multiple-choice question is laid out, shared by
  training data and evaluation so both see the same text.
"""

from __future__ import annotations

from typing import Any

import torch

IGNORE = -100
LETTERS = "ABCDEFGH"
MC_SUFFIX = "Answer with the option's letter."


def format_question(question: str, options: list[str] | None = None) -> str:
    """The user text of a question; options are listed as ``A. ...`` lines."""
    if not options:
        return question
    lines = [f"{LETTERS[i]}. {opt}" for i, opt in enumerate(options)]
    return "\n".join([question, *lines, MC_SUFFIX])


def _ids(tokenizer: Any, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def with_bos(tokenizer: Any, ids: list[int]) -> list[int]:
    """``ids`` starting with the tokenizer's BOS token (when it has one and the text does not already).

    Every example and every generation prompt starts with BOS, so the first position -- where causal LMs
    park attention they do not need (an "attention sink") -- is never the image: an ``<image>`` at
    position 0 (stage A's plain template) is what the LM learns to ignore.
    """
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is None or (ids and ids[0] == bos):
        return list(ids)
    return [bos, *ids]


def chat_example(tokenizer: Any, turns: list[tuple[str, str]], *, system: str | None = None,
                 max_length: int | None = None) -> dict[str, list[int]]:
    """``turns`` = [(user, assistant), ...] -> ``{"input_ids", "labels"}`` (labels only on assistant spans)."""
    messages: list[dict[str, str]] = [{"role": "system", "content": system}] if system else []
    ids: list[int] = []
    labels: list[int] = []
    rendered = ""
    for user, answer in turns:
        messages.append({"role": "user", "content": user})
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        messages.append({"role": "assistant", "content": answer})
        full = tokenizer.apply_chat_template(messages, tokenize=False)
        if not prompt.startswith(rendered) or not full.startswith(prompt):
            raise ValueError("the tokenizer's chat template does not render conversations prefix-wise; "
                             "cannot locate assistant turns")
        p_ids = _ids(tokenizer, prompt[len(rendered):])
        a_ids = _ids(tokenizer, full[len(prompt):])
        ids += p_ids + a_ids
        labels += [IGNORE] * len(p_ids) + a_ids
        rendered = full
    if ids and with_bos(tokenizer, ids[:1]) != ids[:1]:
        ids, labels = [tokenizer.bos_token_id, *ids], [IGNORE, *labels]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def prompt_ids(tokenizer: Any, text: str) -> list[int]:
    """Token ids of a generation prompt (BOS first, see :func:`with_bos`)."""
    return with_bos(tokenizer, _ids(tokenizer, text))


def generation_prompt(tokenizer: Any, user: str, *, system: str | None = None) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def caption_example(tokenizer: Any, prefix: str, caption: str, max_length: int | None = None) -> dict[str, list[int]]:
    """``prefix`` (e.g. the expanded ``<image>`` tokens) + caption + EOS; loss on caption + EOS."""
    p_ids = with_bos(tokenizer, _ids(tokenizer, prefix))
    c_ids = _ids(tokenizer, caption) + [tokenizer.eos_token_id]
    ids, labels = p_ids + c_ids, [IGNORE] * len(p_ids) + c_ids
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "labels": labels}


def pad_examples(examples: list[dict[str, list[int]]], pad_id: int, left: bool = False) -> dict[str, torch.Tensor]:
    """Stack examples into ``input_ids``, ``attention_mask`` (and ``labels`` when present)."""
    width = max(len(e["input_ids"]) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    has_labels = "labels" in examples[0]
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long) if has_labels else None
    for i, e in enumerate(examples):
        n = len(e["input_ids"])
        sl = slice(width - n, width) if left else slice(0, n)
        ids[i, sl] = torch.tensor(e["input_ids"])
        mask[i, sl] = 1
        if has_labels:
            labels[i, sl] = torch.tensor(e["labels"])
    out = {"input_ids": ids, "attention_mask": mask}
    if has_labels:
        out["labels"] = labels
    return out
