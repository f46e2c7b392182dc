"""``synthloop continual``: every setting checked when the config is read, before any model, replay set or
process group is built; every file of a run directory checked before it is used.

Each mistake is a :class:`ContinualConfigError` (a :class:`models.errors.UserError`): one line naming the key or file and what to do (the
``synthloop`` command prints it and exits 2).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from models.errors import UserError
from models.io import torch_file_problem

class ContinualConfigError(UserError, ValueError):
    """A ``continual`` setting or run-directory file is wrong (a ValueError too, for callers catching that)."""


REPLAY_BASES = ("world", "world_full", "imagenet")
ITA_TARGETS = ("same_prompt", "describes")
REPLAY_BACKENDS = ("world", "world_styled", "diffusers")
#: The settings recorded in ``state.json`` that a resumed run must share with the run that started the
#: directory (a different value would silently mix two experiments in one accuracy matrix).
RECORDED = ("model_name", "steps_per_task", "batch_size", "lr", "task_lr", "warmup_steps", "temperature",
            "ita_weight", "awc_lambda", "label_smoothing", "ita_targets", "replay_bn", "logit_scale", "replay_base",
            "replay_size", "seed", "eval_per_class", "eval_seed")


def task_name(spec: str) -> str:
    return spec.split(":", 1)[1] if spec.startswith("folder:") else spec


def _number(key: str, value: Any, *, minimum: float, strict: bool, integer: bool = False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (not integer and not math.isfinite(value)):
        kind = "an integer" if integer else "a number"
        raise ContinualConfigError(f"{key}: must be {kind}, got {value!r}")
    if value < minimum or (strict and value == minimum):
        raise ContinualConfigError(f"{key}: must be {'>' if strict else '>='} {minimum:g}, got {value!r}")


def check_settings(args: dict[str, Any]) -> None:
    """The values of a ``continual(...)`` call (``args`` = its keyword arguments), before anything is built."""
    from datagen.world import TASK_FAMILIES
    from train.gift.module import DEEPSPEED_REFUSAL, METHODS, REPLAY_BN
    from train.core.strategies import is_deepspeed

    tasks = args["tasks"]
    if not tasks:
        raise ContinualConfigError("tasks: the task sequence is empty; list the tasks in training order, e.g. "
                        "[digits, shape, count]")
    for i, spec in enumerate(tasks):
        if not isinstance(spec, str) or not spec:
            raise ContinualConfigError(f"tasks[{i}]: must be a task name, got {spec!r}")
        if spec.startswith("folder:"):
            root = args.get("folder_root")
            if not root:
                raise ContinualConfigError(f"tasks[{i}]: {spec!r} needs folder_root (the converted MTIL folder, docs/mtil.md)")
            if not (Path(root) / task_name(spec)).is_dir():
                raise ContinualConfigError(f"tasks[{i}]: {spec!r}: no folder {Path(root) / task_name(spec)}; convert the dataset "
                                "first (launch/convert_mtil.py, docs/mtil.md) or fix folder_root")
        elif spec not in TASK_FAMILIES:
            raise ContinualConfigError(f"tasks[{i}]: unknown task {spec!r}; world task families: {', '.join(sorted(TASK_FAMILIES))}"
                            " (or folder:<Name> for a converted dataset)")
    names = [task_name(s) for s in tasks]
    if len(set(names)) != len(names):
        raise ContinualConfigError(f"tasks: a task appears twice in {names}; each task of the sequence is learned once")
    if args["method"] not in METHODS:
        raise ContinualConfigError(f"method: unknown continual method {args['method']!r}; valid: {', '.join(METHODS)}")
    if is_deepspeed(args.get("strategy", "auto")):
        raise ContinualConfigError(f"strategy: {DEEPSPEED_REFUSAL}")
    task_lr = args.get("task_lr") or {}
    if not isinstance(task_lr, dict):
        raise ContinualConfigError(f"task_lr: must be a mapping task -> learning rate, got {task_lr!r}")
    if unknown := sorted(set(task_lr) - set(names)):
        raise ContinualConfigError(f"task_lr: names {unknown}, which are not tasks of this sequence {names}; fix the task "
                        "names in task_lr")
    for name, value in task_lr.items():
        _number(f"task_lr.{name}", value, minimum=0, strict=True)
    pretrained = args.get("pretrained")
    if pretrained is not None and not Path(pretrained).is_file():
        hint = " (run `synthloop fit --config configs/quickstart.yaml` first)" if "quickstart" in str(pretrained) else ""
        raise ContinualConfigError(f"pretrained: the starting CLIP checkpoint {pretrained} does not exist{hint}")
    scale = args.get("logit_scale")
    if isinstance(scale, str):
        if scale != "model":
            raise ContinualConfigError(f"logit_scale: must be a number or 'model' (the starting CLIP's own value), got {scale!r}")
    else:
        _number("logit_scale", scale, minimum=0, strict=True)
    for key in ("steps_per_task", "batch_size", "replay_size", "checkpoint_every", "devices"):
        _number(key, args[key], minimum=0, strict=True, integer=True)
    for key in ("warmup_steps", "eval_per_class", "num_workers"):
        _number(key, args[key], minimum=0, strict=False, integer=True)
    for key in ("lr", "temperature", "eval_batch_size"):
        _number(key, args[key], minimum=0, strict=True)
    for key in ("ita_weight", "awc_lambda"):
        _number(key, args[key], minimum=0, strict=False)
    if not (isinstance(args["label_smoothing"], (int, float)) and 0 <= args["label_smoothing"] < 1):
        raise ContinualConfigError(f"label_smoothing: must be in [0, 1), got {args['label_smoothing']!r}")
    if args.get("max_tasks") is not None:
        _number("max_tasks", args["max_tasks"], minimum=0, strict=True, integer=True)
    if args["warmup_steps"] > args["steps_per_task"]:
        raise ContinualConfigError(f"warmup_steps: {args['warmup_steps']} is more than steps_per_task ({args['steps_per_task']})")
    if args["ita_targets"] not in ITA_TARGETS:
        raise ContinualConfigError(f"ita_targets: must be one of {ITA_TARGETS}, got {args['ita_targets']!r}")
    if args.get("replay_bn", "batch") not in REPLAY_BN:
        raise ContinualConfigError(f"replay_bn: must be one of {REPLAY_BN}, got {args['replay_bn']!r}")
    if args["replay_base"] not in REPLAY_BASES:
        raise ContinualConfigError(f"replay_base: must be one of {REPLAY_BASES}, got {args['replay_base']!r}")
    backend = args.get("replay_backend")
    if backend is not None:
        if not isinstance(backend, dict) or backend.get("backend") not in REPLAY_BACKENDS:
            raise ContinualConfigError(f"replay_backend.backend: must be one of {REPLAY_BACKENDS}, got "
                            f"{backend.get('backend') if isinstance(backend, dict) else backend!r}")
        model = backend.get("model")
        if backend["backend"] == "diffusers" and (not model or not Path(model).exists()):
            raise ContinualConfigError(f"replay_backend.model: the diffusers pipeline folder {model!r} does not exist; give a "
                            "local Stable Diffusion folder (save_pretrained layout)")


def read_state(path: Path) -> dict[str, Any]:
    """``state.json`` of a run directory (``{"done": 0}`` when there is none); a damaged one is refused."""
    if not path.exists():
        return {"done": 0}
    try:
        state = json.loads(path.read_text())
        done = int(state["done"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ContinualConfigError(f"{path}: unreadable run state ({type(exc).__name__}: {exc}); the file is truncated or was "
                        "edited: delete the run directory (or give another --out_dir) to start over") from None
    if done < 0 or ("tasks" in state and done > len(state["tasks"])):
        raise ContinualConfigError(f"{path}: done = {done} does not fit its task list; delete the run directory to start over")
    return state


def check_same_run(state: dict[str, Any], path: Path, names: list[str], method: str, settings: dict[str, Any]) -> None:
    """Refuse to continue a run directory that another sequence, method or setting started."""
    if "tasks" in state and state["tasks"] != names:
        raise ContinualConfigError(f"{path}: this run directory holds another task sequence ({state['tasks']}, here {names}); "
                        "give another --out_dir or delete it")
    if "method" in state and state["method"] != method:
        raise ContinualConfigError(f"{path}: this run directory holds a {state['method']!r} run, not {method!r}; give another "
                        "--out_dir (one per method) or delete it")
    recorded = state.get("settings") or {}
    differ = [f"{k}: {recorded[k]!r} there, {settings[k]!r} here" for k in RECORDED
              if k in recorded and k in settings and recorded[k] != settings[k]]
    if differ:
        raise ContinualConfigError(f"{path}: this run directory was started with other settings ({'; '.join(differ)}); give "
                        "another --out_dir or the same settings")


def check_weights(path: Path, what: str) -> None:
    """A finished task's ``model.pt`` (or another weight file) is complete and CRC-intact before it is used."""
    if not path.is_file():
        raise ContinualConfigError(f"{path}: {what} is missing; delete the run directory (or its state.json) to recompute")
    problem = torch_file_problem(path)
    if problem is not None:
        raise ContinualConfigError(f"{path}: {what} is {problem}; delete that task's directory and set state.json's 'done' to "
                        "its task index to recompute it, or start over in another --out_dir")
