"""Policy adapters: batched generation and log-probabilities of generated tokens for a VLM.

Two implementations of the same interface, used by the Vision-Zero engine, trainer, evaluation and
benchmark:

* :class:`EmbeddingVLMPolicy` wraps :class:`models.vlm.EmbeddingVLM` (toy recipe: open_clip tower ->
  projector -> K visual tokens -> any HF causal LM);
* :class:`HFVLMPolicy` wraps a real Hugging Face VLM (``AutoModelForImageTextToText`` +
  ``AutoProcessor``, e.g. Qwen2.5-VL) loaded from a local path (``trust_remote_code`` off by default).

Interface::

    policy.generate(prompts, images, max_new_tokens=..., temperature=..., ...) -> list[Generation]
    policy.logprobs(generations, model=None, temperature=1.0) -> (logp (B, T), mask (B, T))

``generate`` renders each prompt with the model's chat template (one image per prompt), left-pads
the batch, samples with the KV cache and returns new tokens only; a response keeps its EOS token (it
is part of the action and gets a log-probability) and drops everything after it. ``synced_gpus=True``
keeps every rank stepping until all ranks are done (required under DeepSpeed ZeRO-3, where each
forward is a collective); ``min_new_tokens = max_new_tokens`` gives a fixed number of steps.

``logprobs`` rebuilds each sequence as ``[left pad | prompt | response | right pad]`` -- the same
tokens and positions as during generation -- runs ONE forward (per micro-batch) and returns the
log-probabilities of the response tokens with a mask of the real (non-padding) response tokens, EOS
included. ``model`` defaults to the policy's model; pass the frozen reference model to score under
``π_ref`` (with LoRA, the reference is the same model with adapters disabled: :meth:`reference_context`).

``temperature``: the logits are divided by it before the ``log_softmax`` (TRL's GRPO does the same for
the policy, the old policy and the reference), so that a response sampled at temperature ``T`` is
scored under the distribution it was sampled from; the trainer passes its sampling temperature
(``generation.temperature``) for every score of a step (policy, ``π_ref``, the ``inactive_kl`` anchor).
``temperature <= 0`` or ``None`` (greedy decoding) scores at 1.0, the model's own distribution. The
score is of the temperature-scaled FULL distribution: a nucleus truncation (``top_p < 1``), the
suppressed placeholder tokens (``suppress_tokens``) and ``min_new_tokens``' EOS ban of the sampler are
not applied (as in TRL), so with ``top_p < 1`` the scores are not exactly the sampler's probabilities.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch

from train.visionzero.engine import Generation


@dataclass
class GenData:
    """What a :class:`Generation` carries for training (``Generation.data``)."""

    prompt_ids: list[int]
    response_ids: list[int]  # EOS included when produced
    image: Any  # the PIL image (re-encoded for the log-prob forward)
    prompt_text: str = ""  # the chat-formatted prompt (HFVLMPolicy re-processes it)
    image_embed: Any = None  # EmbeddingVLMPolicy with a frozen tower: the pooled embedding (no grad)
    finished: bool = True  # EOS produced within max_new_tokens


def _trim(row: list[int], eos_ids: set[int]) -> tuple[list[int], bool]:
    for i, t in enumerate(row):
        if t in eos_ids:
            return row[:i + 1], True
    return row, False


def score_temperature(temperature: float | None) -> float:
    """The temperature log-probs are computed at: ``temperature``, or 1.0 for ``None`` / ``<= 0`` (greedy)."""
    return float(temperature) if temperature and temperature > 0 else 1.0


def _token_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float | None) -> torch.Tensor:
    """``log_softmax(logits / T)`` at ``targets`` (float32), T = :func:`score_temperature`."""
    logits = logits.float()
    t = score_temperature(temperature)
    if t != 1.0:
        logits = logits / t
    return torch.log_softmax(logits, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def _sample_kwargs(max_new_tokens: int, temperature: float, top_p: float, min_new_tokens: int,
                   synced_gpus: bool) -> dict:
    kw: dict[str, Any] = {"max_new_tokens": int(max_new_tokens), "synced_gpus": bool(synced_gpus)}
    if temperature and temperature > 0:
        kw.update(do_sample=True, temperature=float(temperature), top_p=float(top_p), top_k=0)
    else:
        kw.update(do_sample=False)
    if min_new_tokens:
        kw["min_new_tokens"] = int(min_new_tokens)
    return kw


class EmbeddingVLMPolicy:
    """Batched generation / log-probs for :class:`models.vlm.EmbeddingVLM` (needs its vision tower)."""

    def __init__(self, vlm: torch.nn.Module) -> None:
        self.vlm = vlm
        self.tokenizer = vlm.tokenizer
        self.tokenizer.padding_side = "left"
        if vlm.vision_tower is None:
            raise ValueError("EmbeddingVLMPolicy needs an EmbeddingVLM with a vision tower (it gets images)")
        self.preprocess = vlm.vision_tower.preprocess
        eos = self.tokenizer.eos_token_id
        gen_eos = getattr(getattr(vlm.lm, "generation_config", None), "eos_token_id", None)
        ids = {eos} | (set(gen_eos) if isinstance(gen_eos, (list, tuple)) else {gen_eos})
        self.eos_ids = {int(i) for i in ids if i is not None}
        self._emb_cache: dict[int, tuple[Any, torch.Tensor]] = {}

    @property
    def tower_trainable(self) -> bool:
        return bool(getattr(self.vlm.vision_tower, "trainable", False))

    def clear_cache(self) -> None:
        """Forget cached image embeddings (call once per step: the tower may change between steps)."""
        self._emb_cache.clear()

    @torch.no_grad()
    def embed_images(self, images: list[Any]) -> torch.Tensor:
        """Pooled tower embeddings, computed once per distinct image object (cached until :meth:`clear_cache`)."""
        missing = list({id(im): im for im in images if id(im) not in self._emb_cache}.values())
        if missing:
            emb = self.vlm.vision_tower(self.pixels(missing, self.device))
            for im, e in zip(missing, emb):
                self._emb_cache[id(im)] = (im, e)  # keep the image alive: ids stay unique
        return torch.stack([self._emb_cache[id(im)][1] for im in images])

    def _visual_kwargs(self, images: list[Any]) -> dict[str, torch.Tensor]:
        if self.tower_trainable:
            return {"images": self.pixels(images, self.device)}
        return {"image_embeds": self.embed_images(images)}

    # -- text / image side ----------------------------------------------------------------------
    def format_prompt(self, text: str) -> str:
        image = self.vlm.config.image_token
        chat = self.tokenizer.apply_chat_template([{"role": "user", "content": f"{image}\n{text}"}], tokenize=False,
                                                  add_generation_prompt=True)
        return self.vlm.expand_image_tokens(chat)

    def encode_prompts(self, prompts: list[str]) -> list[list[int]]:
        return [self.tokenizer(self.format_prompt(p), add_special_tokens=False)["input_ids"] for p in prompts]

    def pixels(self, images: list[Any], device: torch.device) -> torch.Tensor:
        cache: dict[int, torch.Tensor] = {}
        out = []
        for im in images:
            if id(im) not in cache:
                cache[id(im)] = self.preprocess(im)
            out.append(cache[id(im)])
        return torch.stack(out).to(device)

    @property
    def device(self) -> torch.device:
        return next(self.vlm.parameters()).device

    # -- generation -----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[str], images: list[Any], *, max_new_tokens: int = 24, temperature: float = 0.8,
                 top_p: float = 1.0, min_new_tokens: int = 0, synced_gpus: bool = False,
                 batch_size: int | None = None) -> list[Generation]:
        if len(prompts) != len(images):
            raise ValueError(f"{len(prompts)} prompts but {len(images)} images")
        if not prompts:
            return []
        bs = batch_size or len(prompts)
        out: list[Generation] = []
        was_training = self.vlm.training
        self.vlm.eval()
        try:
            for i in range(0, len(prompts), bs):
                out += self._generate(prompts[i:i + bs], images[i:i + bs], max_new_tokens, temperature, top_p,
                                      min_new_tokens, synced_gpus)
        finally:
            self.vlm.train(was_training)
        return out

    def _generate(self, prompts, images, max_new_tokens, temperature, top_p, min_new_tokens, synced_gpus):
        device = self.device
        ids = self.encode_prompts(prompts)
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        input_ids = torch.tensor([[pad] * (width - len(r)) + r for r in ids], device=device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in ids], device=device)
        new = self.vlm.generate(input_ids, attention_mask=mask, **self._visual_kwargs(images),
                                eos_token_id=sorted(self.eos_ids), pad_token_id=pad,
                                suppress_tokens=[self.vlm.image_token_id],  # a response never holds <image>
                                **_sample_kwargs(max_new_tokens, temperature, top_p, min_new_tokens, synced_gpus))
        gens = []
        for p_ids, row, im in zip(ids, new.tolist(), images):
            resp, finished = _trim(row, self.eos_ids)
            text = self.tokenizer.decode(resp, skip_special_tokens=True)
            gens.append(Generation(text, GenData(p_ids, resp, im, finished=finished)))
        return gens

    # -- log-probabilities ------------------------------------------------------------------------
    def reference_context(self):
        """Context in which the policy's own model acts as π_ref (LoRA: adapters disabled)."""
        lm = self.vlm.lm
        if getattr(self.vlm, "lora", False) and hasattr(lm, "disable_adapter"):
            return lm.disable_adapter()
        raise RuntimeError("no LoRA adapter: keep a frozen copy of the model as the reference instead")

    def logprobs(self, gens: list[Generation], model: torch.nn.Module | None = None,
                 micro_batch: int | None = None,
                 temperature: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs ``(B, T)`` of the responses under ``model`` at ``temperature`` (module docstring), and the mask."""
        model = model if model is not None else self.vlm
        data = [g.data for g in gens]
        T = max(max(len(d.response_ids) for d in data), 1)
        bs = micro_batch or len(data)
        logps, masks = [], []
        for i in range(0, len(data), bs):
            lp, m = self._logprobs(model, data[i:i + bs], T, temperature)
            logps.append(lp)
            masks.append(m)
        return torch.cat(logps), torch.cat(masks)

    def _logprobs(self, model, data: list[GenData], T: int,
                  temperature: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        device = self.device
        pad = self.tokenizer.pad_token_id
        P = max(len(d.prompt_ids) for d in data)
        rows, att, resp, rmask = [], [], [], []
        for d in data:
            r = d.response_ids
            rows.append([pad] * (P - len(d.prompt_ids)) + d.prompt_ids + r + [pad] * (T - len(r)))
            att.append([0] * (P - len(d.prompt_ids)) + [1] * (len(d.prompt_ids) + len(r)) + [0] * (T - len(r)))
            resp.append(r + [pad] * (T - len(r)))
            rmask.append([1] * len(r) + [0] * (T - len(r)))
        input_ids = torch.tensor(rows, device=device)
        attention_mask = torch.tensor(att, device=device)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    logits_to_keep=T + 1, use_cache=False, **self._visual_kwargs([d.image for d in data]))
        targets = torch.tensor(resp, device=device)
        logp = _token_logprobs(out.logits[:, :-1], targets, temperature)
        return logp, torch.tensor(rmask, device=device, dtype=logp.dtype)


class HFVLMPolicy:
    """The same interface for a Hugging Face VLM with a processor (Qwen2.5-VL, LLaVA-style models...).

    Generation: ``processor(text=chat prompts, images=..., padding=True)`` left-padded, ``model.generate``
    with the KV cache, new tokens sliced off. Log-probs: the prompts are processed again (same pixels,
    same tokens) and the responses appended right-padded; the processor's per-token outputs (Qwen's
    ``mm_token_type_ids``) are extended over the response (:func:`extend_per_token_inputs`) and the
    model computes its own (m)RoPE positions from them and the attention mask -- the same positions as
    in ``generate`` (``tests/test_hf_visionzero.py`` checks it on a tiny random Qwen2.5-VL built by
    :func:`models.tiny_hf.build_tiny_qwen25_vl`); see ``configs/visionzero/qwen25vl_zero3.yaml`` and
    ``docs/visionzero.md``.
    """

    def __init__(self, model: torch.nn.Module, processor: Any) -> None:
        self.model, self.processor = model, processor
        self.tokenizer = getattr(processor, "tokenizer", processor)
        self.tokenizer.padding_side = "left"
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        eos = getattr(model.generation_config, "eos_token_id", None) or self.tokenizer.eos_token_id
        self.eos_ids = {int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])}
        self.vlm = model
        # a response never holds an image / video placeholder: the log-prob forward would count it as a
        # visual token (a mismatch with the image features) and give it a multimodal position
        cfg = model.config
        self.suppress_ids = sorted({int(t) for t in (getattr(cfg, "image_token_id", None),
                                                     getattr(cfg, "video_token_id", None)) if t is not None})

    @classmethod
    def from_pretrained(cls, path: str, dtype: str | torch.dtype | None = "bfloat16",
                        trust_remote_code: bool = False, attn_implementation: str | None = None) -> "HFVLMPolicy":
        from pathlib import Path

        from transformers import AutoModelForImageTextToText, AutoProcessor

        if not Path(path).exists():
            raise FileNotFoundError(f"VLM {path!r} does not exist; give a local save_pretrained folder")
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype)
        kw = {"attn_implementation": attn_implementation} if attn_implementation else {}
        model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype, trust_remote_code=trust_remote_code, **kw)
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
        return cls(model, processor)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def format_prompt(self, text: str) -> str:
        msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}]
        return self.processor.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    def _process(self, texts: list[str], images: list[Any]) -> dict:
        self.tokenizer.padding_side = "left"
        enc = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return {k: v.to(self.device) for k, v in enc.items()}

    @torch.no_grad()
    def generate(self, prompts: list[str], images: list[Any], *, max_new_tokens: int = 128,
                 temperature: float = 0.8, top_p: float = 1.0, min_new_tokens: int = 0, synced_gpus: bool = False,
                 batch_size: int | None = None) -> list[Generation]:
        if not prompts:
            return []
        bs = batch_size or len(prompts)
        out: list[Generation] = []
        was_training = self.model.training
        self.model.eval()
        try:
            for i in range(0, len(prompts), bs):
                texts = [self.format_prompt(p) for p in prompts[i:i + bs]]
                ims = list(images[i:i + bs])
                enc = self._process(texts, ims)
                seq = self.model.generate(**enc, pad_token_id=self.tokenizer.pad_token_id,
                                          eos_token_id=sorted(self.eos_ids), suppress_tokens=self.suppress_ids or None,
                                          **_sample_kwargs(max_new_tokens, temperature, top_p, min_new_tokens,
                                                           synced_gpus))
                width = enc["input_ids"].shape[1]
                for j, (text, im) in enumerate(zip(texts, ims)):
                    resp, finished = _trim(seq[j, width:].tolist(), self.eos_ids)
                    p_ids = enc["input_ids"][j][enc["attention_mask"][j].bool()].tolist()
                    out.append(Generation(self.tokenizer.decode(resp, skip_special_tokens=True),
                                          GenData(p_ids, resp, im, prompt_text=text, finished=finished)))
        finally:
            self.model.train(was_training)
        return out

    def save_pretrained(self, path: str | Any) -> Any:
        """A standalone HF folder: the model (LoRA adapters merged, on a copy) + the processor.

        It loads with ``AutoModelForImageTextToText`` + ``AutoProcessor`` (and :meth:`from_pretrained`).
        """
        import copy
        from pathlib import Path

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        model = self.model
        if hasattr(model, "merge_and_unload"):  # PEFT: merge into a copy, the policy keeps its adapters
            model = copy.deepcopy(model).merge_and_unload()
        model.save_pretrained(path)
        self.processor.save_pretrained(path)
        return path

    def reference_context(self):
        if hasattr(self.model, "disable_adapter"):
            return self.model.disable_adapter()
        raise RuntimeError("no LoRA adapter: keep a frozen copy of the model as the reference instead")

    def logprobs(self, gens: list[Generation], model: torch.nn.Module | None = None,
                 micro_batch: int | None = None,
                 temperature: float | None = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-probs ``(B, T)`` of the responses under ``model`` at ``temperature`` (module docstring), and the mask."""
        model = model if model is not None else self.model
        data = [g.data for g in gens]
        T = max(max(len(d.response_ids) for d in data), 1)
        bs = micro_batch or len(data)
        pad = self.tokenizer.pad_token_id
        logps, masks = [], []
        for i in range(0, len(data), bs):
            chunk = data[i:i + bs]
            enc = self._process([d.prompt_text for d in chunk], [d.image for d in chunk])
            resp = torch.tensor([d.response_ids + [pad] * (T - len(d.response_ids)) for d in chunk], device=self.device)
            rmask = torch.tensor([[1] * len(d.response_ids) + [0] * (T - len(d.response_ids)) for d in chunk],
                                 device=self.device)
            kw = extend_per_token_inputs(enc, T, model=model)
            out = model(input_ids=torch.cat([enc["input_ids"], resp], 1),
                        attention_mask=torch.cat([enc["attention_mask"], rmask.to(enc["attention_mask"].dtype)], 1),
                        logits_to_keep=T + 1, use_cache=False, **kw)
            logps.append(_token_logprobs(out.logits[:, :-1], resp, temperature))
            masks.append(rmask.to(logps[-1].dtype))
        return torch.cat(logps), torch.cat(masks)


def _forward_params(model: torch.nn.Module) -> set[str]:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model  # PEFT
    base = getattr(base, "module", base)  # DDP / DeepSpeed engine
    try:
        return set(inspect.signature(base.forward).parameters)
    except (TypeError, ValueError):
        return set()


def extend_per_token_inputs(enc: dict, n_new: int, model: torch.nn.Module | None = None) -> dict:
    """The processor outputs other than ``input_ids`` / ``attention_mask``, for ``[prompt | n_new tokens]``.

    A processor returns some outputs per prompt TOKEN (shape ``(B, L)`` like ``input_ids``): Qwen2-VL /
    Qwen2.5-VL's ``mm_token_type_ids`` (0 text, 1 image, 2 video), from which the model computes its
    3-D mRoPE positions, or ``token_type_ids``. When response tokens are appended for the log-prob
    forward these must cover the whole sequence, or the model fails (``get_rope_index`` indexes them
    with the full-length attention mask) or, worse, falls back to other positions. Every integer
    ``(B, L)`` output is extended with zeros (= text: a response holds no image placeholder; the
    right padding is masked out by the attention mask). A model whose forward takes
    ``mm_token_type_ids`` while the processor did not return them gets them built from its config's
    image / video token ids, so the positions are the ones ``generate`` used.
    """
    ids = enc["input_ids"]
    out = {}
    for k, v in enc.items():
        if k in ("input_ids", "attention_mask"):
            continue
        if torch.is_tensor(v) and v.dim() == 2 and v.shape == ids.shape and not v.is_floating_point():
            v = torch.cat([v, v.new_zeros(v.shape[0], n_new)], 1)
        out[k] = v
    if model is not None and "mm_token_type_ids" not in out and "mm_token_type_ids" in _forward_params(model):
        cfg = model.config
        types = torch.zeros(ids.shape[0], ids.shape[1] + n_new, dtype=torch.long, device=ids.device)
        for tid, kind in ((getattr(cfg, "image_token_id", None), 1), (getattr(cfg, "video_token_id", None), 2)):
            if tid is not None:
                types[:, :ids.shape[1]][ids == tid] = kind
        out["mm_token_type_ids"] = types
    return out


def generate_fn(policy: Any, **gen_kwargs: Any):
    """Adapter to the engine: ``fn(requests) -> generations``, gen kwargs per stage.

    ``gen_kwargs`` may hold ``clue={...}`` / ``decision={...}`` overrides (e.g. ``max_new_tokens``);
    requests of one batch share a stage (the engine batches per turn and per decision stage).
    """
    per_stage = {k: gen_kwargs.pop(k) for k in ("clue", "decision") if k in gen_kwargs}

    def fn(requests):
        stage = "clue" if requests[0].stage == "clue" else "decision"
        kw = dict(gen_kwargs)
        kw.update(per_stage.get(stage, {}))
        return policy.generate([r.prompt for r in requests], [r.image for r in requests], **kw)

    return fn


@contextlib.contextmanager
def nullcontext():
    yield
