"""lmms-eval support: the ``synthloop_vlm`` model and an export of a VQA file as an lmms-eval task.

    pip install -c constraints.txt -e ".[eval]"
    synthloop export-hf --vlm runs/unicorn_toy/mean_shift/instruct_vlm --out runs/hf --reference-images DIR
    python -m train.unicorn.lmms_adapter task --vqa runs/world_vqa/test.jsonl --out runs/lmms_task
    python -m lmms_eval --model synthloop_vlm --model_args pretrained=runs/hf,device=cpu,trust_remote_code=True \\
        --tasks synthloop_vqa --include_path runs/lmms_task --batch_size 8 --output_path runs/lmms_out

**The model** (:class:`SynthloopVLM`, registered through the ``lmms_eval.models`` entry point of this package,
so ``--model synthloop_vlm`` needs no copy into lmms-eval) reads an ``export-hf`` folder with
``AutoModelForImageTextToText`` + ``AutoProcessor`` (no synthloop model code: the folder is self-contained). It is
a "simple" lmms-eval model: ``generate_until`` only (one image per question, greedy unless the task asks for a
temperature, batched with left padding; the reply is cut at the task's ``until`` strings); the prompt is the
tokenizer's chat template over ``<image>\\n`` + the task's text, as synthloop's own evaluator builds it.

**The task** (:func:`export_task`): any VQA JSONL of :mod:`train.unicorn.vqa_eval` becomes a ``datasets``
folder (images embedded) plus ``<name>.yaml`` and ``<name>_utils.py``: the text is the question with its lettered
options (:func:`train.core.vlm_data.format_question`) and the metric is synthloop's own score
(:func:`train.unicorn.vqa_eval.score`: choice accuracy or normalised exact match), so lmms-eval's accuracy and
``evaluate_vqa``'s are the same quantity.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

MODEL_ID = "synthloop_vlm"


def manifest():
    """The ``lmms_eval.models`` entry point: lmms-eval's registry reads this ModelManifest."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_ID, simple_class_path=f"{__name__}.SynthloopVLM")


def _model_class():
    import torch
    from lmms_eval.api.model import lmms
    from tqdm.auto import tqdm
    from transformers import AutoModelForImageTextToText, AutoProcessor

    class SynthloopVLM(lmms):
        """lmms-eval model over an ``export-hf`` folder (module docstring)."""

        is_simple = True

        def __init__(self, pretrained: str, device: str = "cpu", batch_size: int | str = 1,
                     max_new_tokens: int = 32, system_prompt: str | None = None,
                     trust_remote_code: bool = False, **kwargs: Any) -> None:
            super().__init__()
            if not Path(pretrained, "config.json").is_file():
                raise ValueError(f"synthloop_vlm: pretrained={pretrained} is not an `synthloop export-hf` folder "
                                 f"(no config.json)")
            if trust_remote_code is not True:
                raise ValueError(f"synthloop_vlm: {pretrained} carries its model code (modeling_synthloop_vlm.py); "
                                 f"read it, then add trust_remote_code=True to --model_args")
            self.model = AutoModelForImageTextToText.from_pretrained(
                pretrained, trust_remote_code=trust_remote_code).to(device)
            self.model.eval()
            self.processor = AutoProcessor.from_pretrained(pretrained, trust_remote_code=trust_remote_code)
            self.tokenizer = self.processor.tokenizer
            self.tokenizer.padding_side = "left"
            self._device = torch.device(device)
            self.batch_size = int(batch_size)
            self.max_new_tokens = int(max_new_tokens)
            self.system_prompt = system_prompt
            self.image_token = self.model.config.image_token

        @property
        def device(self):
            return self._device

        def _prompt(self, context: str) -> str:
            user = context if self.image_token in context else f"{self.image_token}\n{context}"
            messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
            messages.append({"role": "user", "content": user})
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)

        def generate_until(self, requests) -> list[str]:
            out: list[str] = []
            for start in tqdm(range(0, len(requests), self.batch_size), disable=self.rank != 0,
                              desc="synthloop_vlm"):
                chunk = [r.args for r in requests[start:start + self.batch_size]]
                prompts, images = [], []
                for context, _gen, doc_to_visual, doc_id, task, split in chunk:
                    visuals = [v for v in doc_to_visual(self.task_dict[task][split][doc_id]) if v is not None]
                    if len(visuals) != 1:
                        raise ValueError(f"synthloop_vlm reads one image per question; doc {doc_id} of task {task} "
                                         f"has {len(visuals)}")
                    prompts.append(self._prompt(context))
                    images.append(visuals[0].convert("RGB"))
                gen = dict(chunk[0][1] or {})
                until = gen.get("until") or []
                until = [until] if isinstance(until, str) else list(until)
                temperature = float(gen.get("temperature", 0) or 0)
                kw = {"max_new_tokens": int(gen.get("max_new_tokens", self.max_new_tokens)),
                      "do_sample": temperature > 0, "pad_token_id": self.tokenizer.pad_token_id,
                      "eos_token_id": self.tokenizer.eos_token_id}
                if temperature > 0:
                    kw.update(temperature=temperature, top_p=float(gen.get("top_p", 1.0)))
                inputs = self.processor(text=prompts, images=images).to(self._device)
                with torch.no_grad():
                    ids = self.model.generate(**inputs, **kw)[:, inputs["input_ids"].shape[1]:]
                for text in self.tokenizer.batch_decode(ids, skip_special_tokens=True):
                    for stop in until:
                        if stop and stop in text:
                            text = text.split(stop, 1)[0]
                    out.append(text)
                    self.cache_hook.add_partial("generate_until", None, text)
            return out

        def loglikelihood(self, requests):
            raise NotImplementedError("synthloop_vlm answers generation tasks only (output_type: generate_until)")

        def generate_until_multi_round(self, requests):
            raise NotImplementedError("synthloop_vlm answers single-turn questions only")

    return SynthloopVLM


def __getattr__(name: str):
    if name == "SynthloopVLM":  # built on first use: importing this module needs no lmms-eval
        cls = _model_class()
        globals()[name] = cls
        return cls
    raise AttributeError(name)


# ---------------------------------------------------------------------------------------------- the task
UTILS = '''"""Written by synthloop (train/unicorn/lmms_adapter.py): the lmms-eval side of a synthloop VQA task."""

from train.unicorn.vqa_eval import score


def doc_to_visual(doc):
    return [doc["image"].convert("RGB")]


def doc_to_text(doc):
    return doc["prompt"]


def process_results(doc, results):
    record = {"answer": doc["answer"], "choices": doc["choices"] or None}
    return {"synthloop_acc": float(score(record, results[0]))}
'''


def export_task(vqa: str | os.PathLike, out: str | os.PathLike, name: str = "synthloop_vqa",
                max_new_tokens: int = 16) -> Path:
    """Write the VQA JSONL ``vqa`` as the lmms-eval task ``name`` under ``out``; return the YAML path."""
    import datasets
    from PIL import Image

    from train.core.vlm_data import format_question
    from train.unicorn.vqa_eval import load_vqa

    records = load_vqa(vqa)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = {"image": [Image.open(r["image_path"]).convert("RGB") for r in records],
            "prompt": [format_question(r["question"], r.get("choices")) for r in records],
            "question": [r["question"] for r in records], "answer": [r["answer"] for r in records],
            "choices": [list(r.get("choices") or []) for r in records],
            "qtype": [str(r.get("qtype", "")) for r in records]}
    features = datasets.Features({"image": datasets.Image(), "prompt": datasets.Value("string"),
                                  "question": datasets.Value("string"), "answer": datasets.Value("string"),
                                  "choices": datasets.Sequence(datasets.Value("string")),
                                  "qtype": datasets.Value("string")})
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows, features=features)}).save_to_disk(out / "data")
    (out / f"{name}_utils.py").write_text(UTILS)
    yaml_path = out / f"{name}.yaml"
    yaml_path.write_text("\n".join([
        f"# Written by synthloop from {Path(vqa).resolve()} ({len(records)} questions)",
        f"task: {name}",
        f"dataset_path: {(out / 'data').resolve()}",
        "dataset_kwargs: {load_from_disk: true}",
        "test_split: test",
        "output_type: generate_until",
        f"doc_to_visual: !function {name}_utils.doc_to_visual",
        f"doc_to_text: !function {name}_utils.doc_to_text",
        "doc_to_target: answer",
        f"generation_kwargs: {{max_new_tokens: {int(max_new_tokens)}, temperature: 0, do_sample: false}}",
        f"process_results: !function {name}_utils.process_results",
        "metric_list:",
        "  - {metric: synthloop_acc, aggregation: mean, higher_is_better: true}",
        "", ]))
    return yaml_path


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m train.unicorn.lmms_adapter", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("task", help="export a VQA JSONL as an lmms-eval task folder")
    t.add_argument("--vqa", required=True)
    t.add_argument("--out", required=True)
    t.add_argument("--name", default="synthloop_vqa")
    t.add_argument("--max-new-tokens", type=int, default=16)
    a = p.parse_args(argv)
    path = export_task(a.vqa, a.out, a.name, a.max_new_tokens)
    print(json.dumps({"task": a.name, "yaml": str(path), "include_path": str(Path(a.out).resolve())}))


if __name__ == "__main__":
    main()
