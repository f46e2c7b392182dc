"""``synthloop continual``: run a continual-learning task sequence end to end (MTIL protocol).

For each task t (in order): build the prompt pool (base pool + first-template prompts of the tasks
before t), make or reuse the replay set (content-hashed, split across ranks), fine-tune the model of
task t-1 on task t with the chosen method (teacher = frozen model of task t-1), evaluate zero-shot on
*every* task of the sequence, checkpoint. Writes, in ``out_dir``:

    state.json                 tasks finished so far (resume point), method, sequence
    accuracy_matrix.{json,csv,png}   A[i, j] = accuracy on task j after task i, + Transfer/Avg/Last/BWT
    zeroshot.json              the starting model's accuracy on every task (the zero-shot reference)
    task{t:02d}-<name>/        Lightning checkpoints of that task (step-level resume) and model.pt (open_clip format)

A killed run restarted with the same command skips finished tasks (their weights are reloaded),
resumes the interrupted task from its last step checkpoint, and reuses existing replay sets.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

from models.io import atomic_write_json
from train.clip import DEFAULT_EVAL_BATCH_SIZE

# torch, Lightning, open_clip and datagen.gift are imported inside continual(), so that `synthloop continual
# --help` answers without loading them.
log = logging.getLogger(__name__)

# Names continual() looks up on this module when it runs (imported on first use), so tests can swap them:
# ``monkeypatch.setattr(runner, "DataMonitor", Crashing)``.
_LAZY = {"DataMonitor": "train.core.callbacks", "create_clip": "models.clip"}


def __getattr__(name: str):
    if name in _LAZY:
        from importlib import import_module

        value = globals()[name] = getattr(import_module(_LAZY[name]), name)
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _lazy(name: str) -> Any:
    return globals()[name] if name in globals() else __getattr__(name)


class TaskSource:
    """One task of the sequence: a world task family, or a converted real dataset (``folder:<Name>``)."""

    def __init__(self, spec: str, image_size: int, folder_root: str | None) -> None:
        self.spec = spec
        if spec.startswith("folder:"):
            from datagen.gift.folders import FolderTask, load_task_info

            if folder_root is None:
                raise ValueError(f"task {spec!r} needs `folder_root` (the converted MTIL folder, docs/mtil.md)")
            self.name = spec.split(":", 1)[1]
            self.root = folder_root
            self.classnames, self.templates = load_task_info(folder_root, self.name)
            self.train = FolderTask(folder_root, self.name, split="train")
        else:
            from datagen.world import TaskSamples, get_task_family

            family = get_task_family(spec)
            self.name, self.root = spec, None
            self.classnames, self.templates = list(family.classnames), list(family.templates)
            self.train = TaskSamples(spec, image_size=image_size, split="train")

    @property
    def first_template_prompts(self) -> list[str]:
        return [self.templates[0].format(c) for c in self.classnames]

    def eval_set(self, preprocess, image_size: int, per_class: int, seed: int, split: str = "test"):
        """The task's held-out :class:`datagen.evalset.EvalSet` of ``split`` ("test" or "val"; preprocessed
        once). Converted real datasets have a test split only (``split="val"`` gives None)."""
        if self.root is not None:
            if split != "test":
                return None
            from datagen.gift.folders import folder_eval_set

            return folder_eval_set(self.root, self.name, preprocess, max_per_class=per_class or None, seed=seed)
        from train.clip.zeroshot import build_world_eval_sets

        return build_world_eval_sets([self.name], per_class, seed, image_size, preprocess, split=split)[0]


def task_stream_seed(seed: int, t: int) -> int:
    """The seed of task ``t``'s training stream (its ``OnlineDataModule``): ``SeedSequence([seed, t])``'s first
    32-bit word, so the tasks' streams are independent for any ``seed`` (``seed * 1000 + t`` collided across
    seeds: seed 1's task 1000 was seed 2's task 0)."""
    import numpy as np

    return int(np.random.SeedSequence([int(seed), int(t)]).generate_state(1)[0])


def _rank_world() -> tuple[int, int]:
    rank = int(os.environ.get("RANK", 0))
    world = int(os.environ.get("WORLD_SIZE", 1))
    return rank, world


def continual(
    tasks: list[str],
    method: str = "gift",
    model_name: str = "synthloop-tiny-vit32",
    pretrained: str | None = None,
    out_dir: str = "runs/continual",
    steps_per_task: int = 1000,
    batch_size: int = 64,
    lr: float = 1e-5,
    task_lr: dict[str, float] | None = None,
    warmup_steps: int = 100,
    temperature: float = 2.0,
    ita_weight: float = 0.25,
    awc_lambda: float = 1.0,
    label_smoothing: float = 0.2,
    ita_targets: str = "same_prompt",
    replay_bn: str = "batch",
    logit_scale: float | str = 100.0,
    replay_base: str = "world",
    replay_size: int = 1000,
    replay_backend: dict[str, Any] | None = None,
    replay_cache: str = "runs/replay_cache",
    regenerate_each_epoch: bool = False,
    seed: int = 42,
    eval_per_class: int = 40,
    eval_seed: int = 1234,
    fisher_samples: int = 256,
    eval_batch_size: int = DEFAULT_EVAL_BATCH_SIZE,
    folder_root: str | None = None,
    num_workers: int = 0,
    checkpoint_every: int = 50,
    keep_task_checkpoints: bool = False,
    accelerator: str = "cpu",
    devices: int = 1,
    strategy: str = "auto",
    precision: str = "32-true",
    max_tasks: int | None = None,
    collective_timeout: float | None = None,
    tiny_random: bool = False,
) -> dict[str, float]:
    """Run (or resume) a continual task sequence; returns Transfer / Avg / Last / BWT.

    Args:
        tasks: the sequence, in training order: world task families ("shape", "digits", ...) or
            converted real datasets ("folder:Aircraft", ...).
        method: finetune | l2 | lwf | ewc | cd | cd_ita | gift.
        model_name, pretrained: the starting CLIP (open_clip name + local checkpoint).
        steps_per_task, batch_size: steps per task; B task images (+ B synthetic pairs) per step (spec: 1000, 64).
        lr, task_lr: base learning rate (spec 1e-5) and per-task overrides (spec: 5e-5 for Aircraft, MNIST).
        warmup_steps: linear warm-up, then cosine to 0 at the end of the task (spec 100).
        temperature, ita_weight, awc_lambda, label_smoothing: spec values 2, 0.25, 1, 0.2.
        ita_targets: "same_prompt" (spec) or "describes" (toy diagnostic: every prompt in the batch that
            truthfully describes a replay image is a positive for it; world-rendered replay only).
        replay_bn: "batch" (the replay images pass the student's BatchNorm layers in train mode, as
            every forward does) or "frozen" (they are normalised with the running statistics of the
            real task images and leave them unchanged); no effect on BatchNorm-free models.
        logit_scale: the fixed CLIP temperature of every loss (spec: 100, which is OpenAI CLIP's own
            learned value) or "model": the starting checkpoint's learned value (the toy CLIP's is ~17).
        replay_base: "world" (toy pre-training vocabulary), "world_full" (its 96 mutually exclusive
            all-attribute prompts) or "imagenet" (real runs).
        replay_size: N prompts drawn with replacement per task (spec 1000).
        replay_backend: {"backend": "world", "image_size": 32} or {"backend": "diffusers", "model": <path>, ...}.
        replay_cache: where content-hashed replay sets live (shared across runs).
        regenerate_each_epoch: a fresh replay set per pass over it (not in the reference runs).
        eval_per_class, eval_seed: held-out images per class of each task's evaluation sets (test and
            validation, each from its own split), and their seed.
        fisher_samples: ``ewc``: images of the previous task whose Fisher is the importance (train.gift.fisher).
        eval_batch_size: images per batch of the zero-shot evaluation after each task (inference only).
        checkpoint_every, keep_task_checkpoints: Lightning checkpoints within a task (for a resume
            mid-task); they are deleted once the task is finished and its ``model.pt`` written, unless kept.
        max_tasks: stop after this many tasks (the run stays resumable; for tests and kill/resume checks).
        strategy: ddp (or auto); DeepSpeed strategies are refused (see ``GIFTTask.setup``).
        collective_timeout: seconds a rank waits for a dead or stuck peer (default
            ``$SYNTHLOOP_COLLECTIVE_TIMEOUT_S``, else torch's 30 min).
        tiny_random: run the config's code path offline with stand-ins built under
            ``<out_dir>/tiny_random/``: ``model_name`` randomly initialised (``pretrained`` ignored), a
            miniature MTIL tree for the ``folder:`` tasks (``datagen.gift.mini_mtil``), a tiny random
            diffusers pipeline for a ``diffusers`` replay backend, its own replay cache, CPU fp32 where no
            GPU is present. Plumbing checks only: the accuracies mean nothing.
    """
    if tiny_random:
        pretrained, folder_root, replay_backend, replay_cache, accelerator, devices, precision = _tiny_random_setup(
            out_dir, tasks, model_name, replay_backend, accelerator, devices, precision)
    args = dict(locals())  # the call's settings, checked before anything is built
    from train.gift.validate import RECORDED, check_same_run, check_settings, check_weights, read_state, task_name

    check_settings(args)
    names = [task_name(s) for s in tasks]
    settings = {k: args[k] for k in RECORDED}
    state_path = Path(out_dir) / "state.json"
    state = read_state(state_path)
    check_same_run(state, state_path, names, method, settings)
    if state["done"]:
        check_weights(Path(out_dir) / f"task{state['done'] - 1:02d}-{names[state['done'] - 1]}" / "model.pt",
                      f"the weights after task {state['done'] - 1}")

    import pytorch_lightning as pl
    import torch

    from datagen.gift import ReplayDataset, backend_from_config, build_pool, make_replay_set, wait_complete
    from datagen.gift.task_stream import ContinualStream, ContinualTransform
    from models.clip import save_open_clip_checkpoint
    from train.clip.zeroshot import zero_shot_correct
    from train.core.checkpoints import find_resume_checkpoint, harden_trainer
    from train.core.datamodule import OnlineDataModule
    from train.core.modes import eval_mode
    from train.core.progress import progress_callbacks
    from train.core.quiet import hygiene_callbacks
    from train.core.resilience import default_callbacks
    from train.core.strategies import resolve_strategy
    from train.gift.fisher import fisher_importance
    from train.gift.metrics import AccuracyMatrix, cl_metrics, format_matrix_table
    from train.gift.module import GIFTTask, logit_scale_is_fixed, method_parts, uses_replay

    DataMonitor, create_clip = _lazy("DataMonitor"), _lazy("create_clip")
    cd, _, _, _ = method_parts(method)
    pl.seed_everything(seed, workers=True, verbose=False)
    needs_replay = uses_replay(method)
    rank, world = _rank_world()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task_lr = task_lr or {}
    replay_backend = replay_backend or {"backend": "world", "image_size": 64}

    bundle = create_clip(model_name, pretrained=pretrained)
    model, preprocess, tokenizer = bundle.model, bundle.preprocess_val, bundle.tokenizer
    if logit_scale == "model":  # the starting CLIP's own learned temperature (OpenAI CLIP's is 100)
        logit_scale = float(model.logit_scale.detach().exp())
        log.info("logit scale fixed at the starting model's own value, %.2f", logit_scale)
    logit_scale_is_fixed(model, float(logit_scale))
    sources = [TaskSource(t, bundle.image_size, folder_root) for t in tasks]
    eval_sets = [s.eval_set(preprocess, bundle.image_size, eval_per_class, eval_seed) for s in sources]
    val_sets = [s.eval_set(preprocess, bundle.image_size, eval_per_class, eval_seed, split="val") for s in sources]
    if any(v is None for v in val_sets):
        log.info("no validation matrix: converted datasets (folder:...) have a test split only")
        val_sets = []

    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}" if accelerator in ("gpu", "cuda")
                          and torch.cuda.is_available() else "cpu")

    def evaluate(m: torch.nn.Module, items_path: Path | None = None) -> tuple[dict[str, float], dict[str, float]]:
        """Test and validation accuracies (%) per task; per-item correctness to ``items_path`` (rank 0).

        Eval mode inside, every submodule's mode restored after: the next task trains in the mode it
        would have had without this evaluation (only rank 0 evaluates before task 0)."""
        items: dict[str, dict[str, str]] = {"test": {}, "val": {}}
        with eval_mode(m):
            m.to(device)
            for split, sets in (("test", eval_sets), ("val", val_sets)):
                for es in sets:
                    ok = zero_shot_correct(m, tokenizer, es, device, batch_size=eval_batch_size)
                    items[split][es.name] = "".join("1" if v else "0" for v in ok.tolist())
            m.cpu()
        if items_path is not None and rank == 0:
            atomic_write_json(items_path, items, sort_keys=False)

        def acc(split: str) -> dict[str, float]:
            return {k: 100.0 * v.count("1") / max(len(v), 1) for k, v in items[split].items()}

        return acc("test"), acc("val")

    matrix = _read_matrix(out / "accuracy_matrix.json", AccuracyMatrix) if state["done"] else AccuracyMatrix(names)
    val_matrix = (_read_matrix(out / "val_accuracy_matrix.json", AccuracyMatrix) if state["done"]
                  and (out / "val_accuracy_matrix.json").exists() else AccuracyMatrix(names)) if val_sets else None
    (out / "items").mkdir(exist_ok=True)
    if not (out / "zeroshot.json").exists() and rank == 0:
        zs, zs_val = evaluate(model, out / "items" / "zeroshot.json")
        atomic_write_json(out / "zeroshot_val.json", zs_val, sort_keys=False)
        atomic_write_json(out / "zeroshot.json", zs, sort_keys=False)
        log.info("zero-shot before training: %s", zs)
    if state["done"]:
        prev = out / f"task{state['done'] - 1:02d}-{names[state['done'] - 1]}" / "model.pt"
        try:
            model.load_state_dict(torch.load(prev, map_location="cpu", weights_only=True)["state_dict"])
        except Exception as exc:  # noqa: BLE001 - an untrusted pickle, a foreign file, another model's weights
            from models.errors import UserError

            msg = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            raise UserError(f"{prev}: cannot load the weights after task {state['done'] - 1} ({msg}); delete that "
                            "task's directory and state.json to recompute, or use another --out_dir") from None
        log.info("resuming after %d finished tasks (weights from %s)", state["done"], prev)

    last = len(sources) if max_tasks is None else min(len(sources), state["done"] + max_tasks)
    for t in range(state["done"], last):
        src = sources[t]
        task_dir = out / f"task{t:02d}-{src.name}"
        teacher = copy.deepcopy(model).eval() if (cd or method == "lwf") else None  # GIFTTask keeps it eval
        importance = None
        if method == "ewc" and t > 0:  # the Fisher of the task just finished, at its final weights
            prev_src = sources[t - 1]
            importance = fisher_importance(model, tokenizer, prev_src.train, prev_src.first_template_prompts,
                                           preprocess, n_samples=fisher_samples, seed=seed + t,
                                           scale=float(logit_scale), device=device)
            log.info("task %d: EWC importance from the Fisher of %d %s training images", t, fisher_samples,
                     prev_src.name)
        replay = None
        if needs_replay:
            pool = build_pool(replay_base, [(s.classnames, s.templates[0]) for s in sources[:t]])
            backend = backend_from_config(replay_backend)
            # one set per pass over it when regenerating each epoch (about steps * B / N passes)
            passes = math.ceil(steps_per_task * batch_size * world / replay_size) if regenerate_each_epoch else 1
            replay = []
            for epoch in range(passes):
                set_dir = make_replay_set(pool, replay_size, seed + t, backend, replay_cache, rank=rank,
                                          world_size=world, epoch=epoch)
                wait_complete(set_dir)
                replay.append(ReplayDataset(set_dir, describes=ita_targets == "describes"))
            log.info("task %d (%s): %d replay set(s) like %s, %d images (%d dropped), pool of %d prompts", t,
                     src.name, len(replay), set_dir.name, len(replay[0]), replay[0].dropped, len(pool))
        module = GIFTTask(model, teacher, tokenizer, src.first_template_prompts, method=method,
                          lr=task_lr.get(src.name, lr), warmup_steps=warmup_steps, total_steps=steps_per_task,
                          temperature=temperature, ita_weight=ita_weight, awc_lambda=awc_lambda,
                          label_smoothing=label_smoothing, ita_targets=ita_targets, replay_bn=replay_bn,
                          logit_scale=float(logit_scale),
                          importance=importance)
        dm = OnlineDataModule(generator=ContinualStream(src.train, replay, seed=seed + t), batch_size=batch_size,
                              num_workers=num_workers, seed=task_stream_seed(seed, t),
                              transform=ContinualTransform(preprocess))
        ckpt_cb = pl.callbacks.ModelCheckpoint(dirpath=task_dir / "checkpoints", every_n_train_steps=checkpoint_every,
                                               save_last=True, save_top_k=1, filename="step{step:06d}",
                                               auto_insert_metric_name=False)
        progress, bar = progress_callbacks([], None)  # a step bar in a terminal, log lines otherwise
        hygiene, _ = hygiene_callbacks([], False)
        trainer = pl.Trainer(max_steps=steps_per_task, accelerator=accelerator, devices=devices,
                             strategy=resolve_strategy(strategy, accelerator, collective_timeout),
                             precision=precision, logger=pl.loggers.TensorBoardLogger(str(out), name="logs",
                                                                                      version=f"task{t:02d}"),
                             callbacks=[ckpt_cb, DataMonitor(), *default_callbacks(), *progress, *hygiene],
                             enable_model_summary=False, num_sanity_val_steps=0, limit_val_batches=0,
                             default_root_dir=str(task_dir), log_every_n_steps=10,
                             enable_progress_bar=bar and rank == 0)
        harden_trainer(trainer)  # atomic checkpoint writes, weights_only loading
        resume = find_resume_checkpoint(task_dir / "checkpoints")  # the resume rule: highest step, torn skipped
        trainer.fit(module, datamodule=dm, ckpt_path=resume)
        model = module.model
        accs, val_accs = evaluate(model, out / "items" / f"after_task{t:02d}.json")
        matrix.set_row(t, accs)
        if val_matrix is not None:
            val_matrix.set_row(t, val_accs)
        if rank == 0:
            save_open_clip_checkpoint(model, task_dir / "model.pt", model_name, task=t, task_name=src.name)
            matrix.to_json(out / "accuracy_matrix.json")
            matrix.to_csv(out / "accuracy_matrix.csv")
            if val_matrix is not None:
                val_matrix.to_json(out / "val_accuracy_matrix.json")
            matrix.heatmap_png(out / "accuracy_matrix.png", title=f"{method}: accuracy matrix")
            atomic_write_json(state_path, {"done": t + 1, "tasks": names, "method": method, "settings": settings},
                              sort_keys=False)
            if not keep_task_checkpoints:  # the task is recorded as done: resume starts from model.pt now
                shutil.rmtree(task_dir / "checkpoints", ignore_errors=True)
            print(f"\nafter task {t} ({src.name}): " + ", ".join(f"{k} {v:.1f}" for k, v in accs.items()))
        state["done"] = t + 1
    if matrix.rows_done == len(names):
        metrics = cl_metrics(matrix.values)
        if rank == 0:
            print("\n" + format_matrix_table(matrix.values, names))
        return metrics
    return matrix.metrics()


def _tiny_random_setup(out_dir: str, tasks: list[str], model_name: str, replay_backend: dict[str, Any] | None,
                       accelerator: str, devices: int, precision: str) -> tuple:
    """The stand-ins of ``continual(tiny_random=True)``, built (once) under ``<out_dir>/tiny_random/``."""
    import torch

    from datagen.gift.backends import tiny_diffusers_pipeline
    from datagen.gift.mini_mtil import build_mini_mtil
    from train.gift.validate import task_name

    root = Path(out_dir) / "tiny_random"
    folders = [task_name(t) for t in tasks if t.startswith("folder:")]
    folder_root = str(build_mini_mtil(root / "mtil", folders, per_class=1)) if folders else None  # every class
    backend = dict(replay_backend or {"backend": "world", "image_size": 64})
    if backend.get("backend") == "diffusers":
        sd = root / "sd"
        if not (sd / "model_index.json").is_file():
            tiny_diffusers_pipeline(sd)
        backend.update(model=str(sd), height=32, width=32, steps=2, batch_size=16)
    if not torch.cuda.is_available():
        accelerator, devices, precision = "cpu", 1, "32-true"
        if backend.get("backend") == "diffusers":
            backend.update(device="cpu", dtype="fp32")
    log.warning("tiny-random: %s with random weights, %s, %s; every figure of this run is meaningless",
                model_name, f"a miniature MTIL tree at {folder_root}" if folders else "no folder tasks",
                f"a tiny random diffusion pipeline at {backend['model']}" if backend.get("backend") == "diffusers"
                else f"replay backend {backend.get('backend')}")
    return None, folder_root, backend, str(root / "replay_cache"), accelerator, devices, precision


def _read_matrix(path: Path, cls: Any) -> Any:
    try:
        return cls.from_json(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        from models.errors import UserError

        raise UserError(f"{path}: unreadable accuracy matrix ({type(exc).__name__}: {exc}); delete the run directory "
                        "(or give another --out_dir) to start over") from None


def main(argv: list[str] | None = None) -> None:
    """``synthloop continual --config configs/gift/toy.yaml [--method lwf] [--out_dir ...]``; a config mistake
    (unknown key, wrong type) ends in one line: ``synthloop: config error in <config>: <key>: <what>``."""
    from jsonargparse import CLI, ArgumentError

    argv = list(argv) if argv is not None else None
    try:
        CLI(continual, args=argv, as_positional=False, exit_on_error=False, allow_abbrev=False)
    except Exception as exc:
        # parse errors only: anything continual() itself raises propagates unchanged
        if not (isinstance(exc, ArgumentError) or type(exc).__name__ in ("ArgumentError", "NSKeyError")):
            raise
        from datagen.errors import config_error_line

        args = argv or []
        configs = [a for i, a in enumerate(args) if i > 0 and args[i - 1] in ("--config", "-c")]
        configs += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
        where = f" in {', '.join(configs)}" if configs else ""
        raise SystemExit(f"synthloop: config error{where}: {config_error_line(exc)}") from None
