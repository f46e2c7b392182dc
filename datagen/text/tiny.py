"""A tiny, randomly initialised chat LM saved to disk, loadable offline (tests and smoke runs).

The tokenizer is word-level (``tokenizers.models.WordLevel`` over the scene world's vocabulary plus
JSON punctuation) with a whitespace/punctuation pre-tokenizer, wrapped in
``PreTrainedTokenizerFast`` with a minimal jinja chat template::

    <|system|> ... <|end|> <|user|> ... <|end|> <|assistant|>

The model is a 1-layer ``LlamaForCausalLM`` (hidden 32): outputs are random words, which is all a
backend test needs (strings come back, batching and padding work).
"""

from __future__ import annotations

import os

SPECIAL_TOKENS = ["<pad>", "<unk>", "<s>", "</s>", "<|system|>", "<|user|>", "<|assistant|>", "<|end|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _vocabulary() -> list[str]:
    from datagen.world import COLORS, MATERIALS, NUMBER_WORDS, SHAPES, SIZES

    words = ["a", "an", "the", "there", "is", "are", "of", "and", "to", "left", "right", "in", "front", "behind",
             "object", "objects", "how", "many", "what", "color", "shape", "yes", "no", "question", "answer",
             "type", "mc", "open", "reasoning", "options", "caption", "seed", "write", "json",
             "{", "}", "[", "]", ":", ",", ".", "?", '"', "A", "B", "C", "D"]
    words += list(COLORS) + list(SHAPES) + list(SIZES) + list(MATERIALS) + list(NUMBER_WORDS)
    words += [s + "s" for s in SHAPES]
    return list(dict.fromkeys(words))  # ordered de-duplication


def build_tiny_chat_model(path: str | os.PathLike, seed: int = 0) -> str:
    """Write a tiny random Llama + word-level tokenizer (with chat template) to ``path``; return the path."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import WordLevel
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + _vocabulary())}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    # Whitespace splits words from punctuation (\w+|[^\w\s]+), so JSON symbols become their own tokens.
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=SPECIAL_TOKENS[4:])
    fast.chat_template = CHAT_TEMPLATE
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(vocab), max_position_embeddings=512,
                         bos_token_id=vocab["<s>"], eos_token_id=vocab["</s>"], pad_token_id=vocab["<pad>"])
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = vocab["<pad>"]
    path = os.fspath(path)
    model.save_pretrained(path)
    fast.save_pretrained(path)
    return path
