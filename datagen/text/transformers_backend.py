"""Local chat LM through ``transformers``: ``AutoModelForCausalLM`` + ``AutoTokenizer``, batched generate.

Prompts go through the tokenizer's chat template (``add_generation_prompt=True``), are left-padded
(a decoder-only model continues from the *last* position, so padding must sit on the left) and
generated in batches of ``batch_size``. Sampling is seeded per call inside ``torch.random.fork_rng``
so that a backend call neither depends on nor disturbs the caller's global RNG.
"""

from __future__ import annotations

import logging
from typing import Any

import torch

from .base import Messages, TextBackend

log = logging.getLogger(__name__)
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "auto": "auto"}


class TransformersBackend(TextBackend):
    """``complete`` with a local Hugging Face causal LM (loaded lazily on first use).

    Batch ``b`` of a call samples under ``torch.manual_seed(seed + b)``: a call is reproducible for
    fixed ``batch_size``; with sampling, a prompt's output depends on its batch (greedy decoding,
    ``temperature=0``, does not: padding is masked). A batch whose ``generate`` raises (e.g. out of
    memory on a long prompt) is retried one prompt at a time; a prompt that still fails yields None
    and counts in ``failures``.
    """

    name = "transformers"

    def __init__(self, model_path: str, device: str = "cpu", dtype: str | torch.dtype = "fp32",
                 batch_size: int = 8, trust_remote_code: bool = False) -> None:
        super().__init__()
        self.model_path, self.device, self.batch_size = str(model_path), device, int(batch_size)
        self.dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
        self.trust_remote_code = trust_remote_code
        self._model = self._tokenizer = None

    def config(self) -> dict[str, Any]:
        return {"backend": self.name, "model_path": self.model_path, "dtype": str(self.dtype)}

    def load(self) -> None:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        if self._model is not None:
            return
        tok = AutoTokenizer.from_pretrained(self.model_path, trust_remote_code=self.trust_remote_code)
        tok.padding_side = "left"
        if tok.pad_token is None:  # many chat LMs ship without one; padding positions are masked anyway
            tok.pad_token = tok.eos_token
        if tok.chat_template is None:
            raise ValueError(f"{self.model_path}: the tokenizer has no chat_template; use an instruction-tuned model")
        model = AutoModelForCausalLM.from_pretrained(self.model_path, dtype=self.dtype,
                                                     trust_remote_code=self.trust_remote_code)
        self._model, self._tokenizer = model.to(self.device).eval(), tok

    @torch.inference_mode()
    def _generate(self, batch: list[Messages], max_new_tokens: int, temperature: float, seed: int) -> list[str]:
        tok, model = self._tokenizer, self._model
        texts = [tok.apply_chat_template(m, add_generation_prompt=True, tokenize=False) for m in batch]
        # The chat template already holds the special tokens it wants (BOS etc.): add none twice.
        enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(self.device)
        sample = temperature > 0
        kw = dict(do_sample=sample, max_new_tokens=int(max_new_tokens), pad_token_id=tok.pad_token_id)
        if sample:
            kw["temperature"] = float(temperature)
        devices = [self.device] if str(self.device).startswith("cuda") else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            out = model.generate(**enc, **kw)
        return tok.batch_decode(out[:, enc["input_ids"].shape[1]:], skip_special_tokens=True)

    def complete(self, prompts: list[Messages], *, max_new_tokens: int = 512, temperature: float = 0.7,
                 seed: int = 0) -> list[str | None]:
        self.load()
        results: list[str | None] = []
        for b, start in enumerate(range(0, len(prompts), self.batch_size)):
            batch = prompts[start:start + self.batch_size]
            try:
                results += [t.strip() for t in self._generate(batch, max_new_tokens, temperature, seed + b)]
                continue
            except Exception as exc:  # noqa: BLE001 -- a bad batch must not stop data generation
                log.warning("generate failed for a batch of %d (%s); retrying prompt by prompt", len(batch), exc)
            for k, msgs in enumerate(batch):
                try:
                    results.append(self._generate([msgs], max_new_tokens, temperature, seed + start + k)[0].strip())
                except Exception as exc:  # noqa: BLE001
                    log.warning("generate failed for prompt %d: %s", start + k, exc)
                    self.failures += 1
                    results.append(None)
        return results
