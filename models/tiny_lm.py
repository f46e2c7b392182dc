"""A tiny causal LM whose word-level tokenizer is built from the scene world's language (toy recipes).

The tokenizer round-trips text exactly: a ``Metaspace`` pre-tokenizer marks a word that follows a
space with "▁" (no "▁" is prepended at the start of a text or after a special token, so a
conversation tokenized turn by turn gives the same ids as tokenized whole) and every punctuation
character is its own token, so ``\\boxed{3}``, JSON and "Player 2:" decode
back to the same string. The vocabulary is every piece that occurs in the texts it is built from (the toy recipes pass
:func:`datagen.text.corpus.world_corpus`: captions, QA, instruction JSON, the prompt files);
anything else becomes ``<unk>``.

Chat template (also used by the VLM trainers)::

    <|system|>...<|end|><|user|>...<|end|><|assistant|>...<|end|>

``<|end|>`` is the EOS token, so generation stops at the end of an assistant turn.
"""

from __future__ import annotations

import os
from typing import Iterable

SPECIALS = ["<pad>", "<unk>", "<s>", "<|end|>", "<|system|>", "<|user|>", "<|assistant|>", "<image>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|end|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _pre_tokenizer():
    from tokenizers import Regex, pre_tokenizers

    return pre_tokenizers.Sequence([
        pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never"),
        pre_tokenizers.Split(Regex(r"[^\w▁]"), behavior="isolated"),
    ])


def build_word_tokenizer(texts: Iterable[str], extra_specials: Iterable[str] = ()):
    """A ``PreTrainedTokenizerFast`` with the vocabulary of ``texts`` and the chat template above."""
    from tokenizers import Tokenizer, decoders
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    pre = _pre_tokenizer()
    pieces: dict[str, None] = {}
    for text in texts:
        for piece, _ in pre.pre_tokenize_str(text):
            # a word gets both forms: after a space ("▁red") and at a segment start ("red", e.g. right
            # after a chat special token), so that tokenizing a conversation piecewise equals tokenizing it whole
            word = piece.lstrip("▁")
            if word:
                pieces.setdefault(word)
                pieces.setdefault("▁" + word)
            else:
                pieces.setdefault(piece)
    specials = list(dict.fromkeys(SPECIALS + list(extra_specials)))
    vocab = {tok: i for i, tok in enumerate(specials + sorted(p for p in pieces if p not in specials))}
    tok = Tokenizer(WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="never")
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|end|>", unk_token="<unk>",
                                   pad_token="<pad>", additional_special_tokens=specials[4:])
    fast.chat_template = CHAT_TEMPLATE
    fast.padding_side = "left"
    return fast


def build_tiny_lm(path: str | os.PathLike, *, texts: Iterable[str], hidden: int = 128,
                  layers: int = 2, heads: int = 4, intermediate: int | None = None, max_positions: int = 1024,
                  seed: int = 0) -> str:
    """Save a randomly initialised ``LlamaForCausalLM`` + world tokenizer to ``path``; return the path."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tokenizer = build_word_tokenizer(texts)
    torch.manual_seed(seed)
    config = LlamaConfig(hidden_size=hidden, intermediate_size=intermediate or 4 * hidden, num_hidden_layers=layers,
                         num_attention_heads=heads, num_key_value_heads=heads, vocab_size=len(tokenizer),
                         max_position_embeddings=max_positions, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                         tie_word_embeddings=True)
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    path = os.fspath(path)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
