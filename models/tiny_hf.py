"""Tiny randomly initialised REAL Hugging Face architectures, built offline in about a second.

Used by the tests (``tests/test_hf_visionzero.py``) and by anything that needs a stand-in of a real
checkpoint without the hub: the saved folders have the layout of the released models
(``save_pretrained`` of the model and of its processor / tokenizer) and load with the ``Auto*``
classes, so the code paths are the ones a real Qwen2.5-VL or Llama checkpoint takes; only the sizes
and the (random) weights differ.

* :func:`build_tiny_qwen25_vl`: ``Qwen2_5_VLForConditionalGeneration`` (2 text layers, hidden 64,
  mRoPE; 2 vision blocks with window + full attention) + ``Qwen2_5_VLProcessor`` (Qwen's special
  tokens and chat template, a byte-level BPE trained on the scene world's texts, images resized to
  4..16 merged patches, i.e. 4..16 ``<|image_pad|>`` tokens per image);
* :func:`build_tiny_llama_lm`: ``LlamaForCausalLM`` + the same kind of tokenizer with a Llama-3-style
  chat template.

The tokenizer is a byte-level BPE (Qwen2's pre-tokenizer regex + ``ByteLevel``) trained with the
``tokenizers`` library on ``texts`` (the tests pass :func:`datagen.text.corpus.world_corpus`:
captions, QA, the game prompt files; default :func:`default_corpus`), so every string encodes and
round-trips, and the world's words are few tokens each.
"""

from __future__ import annotations

import os
from typing import Iterable

QWEN_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                 "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                 "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>"]

# The Qwen2.5-VL-Instruct chat template (default system prompt, one <|vision_start|><|image_pad|><|vision_end|>
# block per image item; the processor expands <|image_pad|> to the image's number of merged patches).
QWEN25_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}"
    "{% if add_vision_id %}Picture {{ image_count.value }}: {% endif %}"
    "<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}"
    "<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

LLAMA_SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                  "<|finetune_right_pad_id|>"]
LLAMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "<|start_header_id|>{{ message['role'] }}<|end_header_id|>\n\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for c in message['content'] %}{% if c['type'] == 'text' %}{{ c['text'] }}{% endif %}{% endfor %}"
    "{% endif %}<|eot_id|>{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)


CONFIG_DIR = os.path.normpath(os.path.join(os.path.dirname(__file__), "..", "configs"))
_WORDS = ("red green blue yellow purple cyan gray brown orange white black small large big tiny metal rubber "
          "shiny matte cube sphere cylinder cone object objects left right behind front above below next to of "
          "the a an is are there how many what color shape size which image picture spy player players clue "
          "clues vote votes round civilian civilians none nothing same different I think because my your")


def default_corpus() -> list[str]:
    """A small default training text: every prompt file under ``configs/**/prompts/`` (the game prompts),
    the world's common words and the numbers / letters of the answer formats. Callers that have the
    scene world at hand pass :func:`datagen.text.corpus.world_corpus` instead (``models/`` does not
    import ``datagen/``)."""
    import glob

    texts = [open(p, encoding="utf-8").read()
             for p in sorted(glob.glob(os.path.join(CONFIG_DIR, "**", "prompts", "*.yaml"), recursive=True))]
    words = _WORDS.split()
    texts += [" ".join(words[i:i + 12]) + "." for i in range(0, len(words), 12)]
    texts += [w.capitalize() for w in words]
    texts.append(" ".join(str(i) for i in range(101)) + " A B C D E F G H N/A NA \\boxed{1} Player 2: {\"a\": 1}")
    return texts


def train_byte_bpe(texts: Iterable[str], vocab_size: int = 1024,
                   specials: Iterable[str] = ("<|endoftext|>",)) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A byte-level BPE trained on ``texts`` with Qwen2's pre-tokenizer: ``(vocab, merges)``.

    The special tokens come first (ids 0..n-1), then the 256 byte symbols, then the merges.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, trainers

    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(specials), show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(list(texts), trainer=trainer)
    import json

    model = json.loads(tok.to_str())["model"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    return dict(model["vocab"]), merges


def build_qwen2_tokenizer(texts: Iterable[str] | None = None, vocab_size: int = 1024):
    """``Qwen2TokenizerFast`` with a BPE trained on ``texts`` (default: the world corpus), Qwen's special tokens
    and the Qwen2.5-VL chat template. EOS ``<|im_end|>``, padding ``<|endoftext|>`` (left)."""
    from tokenizers import AddedToken
    from transformers import Qwen2TokenizerFast

    vocab, merges = train_byte_bpe(texts if texts is not None else default_corpus(), vocab_size, QWEN_SPECIALS)
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, unk_token=None, bos_token=None, eos_token="<|im_end|>",
                             pad_token="<|endoftext|>", padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                          for t in QWEN_SPECIALS if t not in ("<|endoftext|>",
                                                                                              "<|im_end|>")]})
    tok.chat_template = QWEN25_VL_CHAT_TEMPLATE
    tok.padding_side = "left"
    tok.model_max_length = 32768
    assert len(tok) == len(vocab), (len(tok), len(vocab))  # the specials are in the trained vocabulary
    return tok


def build_tiny_qwen25_vl(folder: str | os.PathLike, *, texts: Iterable[str] | None = None, vocab_size: int = 1024,
                         hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                         vision_hidden: int = 32, vision_depth: int = 2, vision_heads: int = 2,
                         min_pixels: int = 28 * 28 * 4, max_pixels: int = 28 * 28 * 16,
                         initializer_range: float = 0.2, seed: int = 0) -> str:
    """Save a random tiny ``Qwen2_5_VLForConditionalGeneration`` + ``Qwen2_5_VLProcessor`` to ``folder``.

    Text: ``layers`` × ``hidden`` (head_dim = hidden / heads = 16, mRoPE sections [2, 3, 3] summing to
    head_dim / 2), tied embeddings. Vision: ``vision_depth`` blocks (the last one full attention, the
    others windowed), patch 14, 2 × 2 merge, ``out_hidden_size`` = ``hidden``. Images are resized to
    ``min_pixels`` .. ``max_pixels`` (default 4 .. 16 image tokens). Returns ``folder``.
    """
    import torch
    from transformers import (GenerationConfig, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration,
                              Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor)

    if hidden % heads or (hidden // heads) % 2:
        raise ValueError(f"hidden {hidden} / heads {heads}: head_dim must be an even integer")
    head_dim = hidden // heads
    half = head_dim // 2
    hw = (3 * half) // 8  # Qwen2.5-VL's proportions: [16, 24, 24] for head_dim 128, [2, 3, 3] for 16
    mrope = [half - 2 * hw, hw, hw]  # temporal, height, width: sums to head_dim / 2
    if min(mrope) < 1:
        raise ValueError(f"head_dim {head_dim} too small for mRoPE")

    tok = build_qwen2_tokenizer(texts, vocab_size)
    ids = {t: tok.convert_tokens_to_ids(t) for t in QWEN_SPECIALS}
    image_processor = Qwen2VLImageProcessor(min_pixels=min_pixels, max_pixels=max_pixels)
    video_processor = Qwen2VLVideoProcessor()
    processor = Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tok, video_processor=video_processor,
                                    chat_template=QWEN25_VL_CHAT_TEMPLATE)

    text_config = {
        "vocab_size": len(tok), "hidden_size": hidden, "intermediate_size": 2 * hidden,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv_heads,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "rope_theta": 1_000_000.0,
        "rope_scaling": {"type": "mrope", "mrope_section": mrope},
        "bos_token_id": None, "eos_token_id": ids["<|im_end|>"], "pad_token_id": ids["<|endoftext|>"],
        "use_sliding_window": False, "max_window_layers": layers, "initializer_range": initializer_range,
    }
    vision_config = {
        "depth": vision_depth, "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
        "num_heads": vision_heads, "out_hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2,
        "temporal_patch_size": 2, "window_size": 112, "fullatt_block_indexes": [vision_depth - 1],
        "tokens_per_second": 2, "in_channels": 3, "initializer_range": initializer_range,
    }
    config = Qwen2_5_VLConfig(text_config=text_config, vision_config=vision_config,
                              image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
                              vision_start_token_id=ids["<|vision_start|>"],
                              vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=None, pad_token_id=ids["<|endoftext|>"],
                                               eos_token_id=[ids["<|im_end|>"], ids["<|endoftext|>"]])
    folder = os.fspath(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def build_tiny_llama_lm(folder: str | os.PathLike, *, texts: Iterable[str] | None = None, vocab_size: int = 1024,
                        hidden: int = 64, layers: int = 2, heads: int = 4, kv_heads: int = 2,
                        max_positions: int = 4096, initializer_range: float = 0.2, seed: int = 0) -> str:
    """Save a random tiny ``LlamaForCausalLM`` + byte-level BPE tokenizer (Llama-3-style chat template, which
    writes the BOS itself -- the tokenizer adds no special tokens; EOS ``<|eot_id|>``, left padding with
    ``<|finetune_right_pad_id|>``) to ``folder``; returns ``folder``."""
    import torch
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    vocab, merges = train_byte_bpe(texts if texts is not None else default_corpus(), vocab_size, LLAMA_SPECIALS)
    bpe = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False,
                               byte_fallback=False))
    bpe.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    bpe.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>",
                                  pad_token="<|finetune_right_pad_id|>", padding_side="left")
    tok.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True, normalized=False)
                                                          for t in LLAMA_SPECIALS]})
    tok.chat_template = LLAMA_CHAT_TEMPLATE
    tok.padding_side = "left"
    ids = {t: tok.convert_tokens_to_ids(t) for t in LLAMA_SPECIALS}
    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=2 * hidden,
                         num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=kv_heads,
                         max_position_embeddings=max_positions, bos_token_id=ids["<|begin_of_text|>"],
                         eos_token_id=[ids["<|eot_id|>"], ids["<|end_of_text|>"]],
                         pad_token_id=ids["<|finetune_right_pad_id|>"], tie_word_embeddings=True,
                         initializer_range=initializer_range)
    model = LlamaForCausalLM(config).eval()
    model.generation_config = GenerationConfig(bos_token_id=ids["<|begin_of_text|>"],
                                               eos_token_id=[ids["<|eot_id|>"], ids["<|end_of_text|>"]],
                                               pad_token_id=ids["<|finetune_right_pad_id|>"])
    folder = os.fspath(folder)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder
