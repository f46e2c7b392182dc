"""``synthloop datagen <kind>``: materialise synthetic data to WebDataset shards (argument parsing and dispatch).

    synthloop datagen world --out runs/world-data --n 10000                 # the scene world's WorldCaptions
    synthloop datagen world --out runs/world-data --n 20000                 # same command again: continues
    synthloop datagen world --config world.yaml --seed 3 --maxcount 500    # any generator, from a YAML config
    synthloop datagen world --out runs/qa --n 500 --generator.class_path datagen.world.WorldQA \
        --generator.init_args.image_size 64
    synthloop datagen unicorn --config configs/unicorn/datagen_world.yaml
    synthloop datagen unicorn --config configs/unicorn/datagen_world.yaml --n 500 --out runs/x --seed 3
    synthloop datagen unicorn --config ... --resume          # continue an interrupted (or shorter) export
    synthloop datagen unicorn --config ... --dry_run         # build generator + backend, reach it, print config
    synthloop datagen unicorn --config ... --stage3.clip_checkpoint runs/quickstart/clip_final.pt
    synthloop datagen clip-benchmark --family shape --image_size 32 --out runs/cb/shape      # CLIP_benchmark wds/
    synthloop datagen clip-benchmark --image_folder /data/mtil --dataset Aircraft --out runs/cb/Aircraft

``world`` writes the first ``--n`` kept samples of any :class:`datagen.stream.SampleGenerator` (``class_path``
/ ``init_args``, default ``datagen.world.WorldCaptions``) with ``--seed`` to ``{out}/shard-%06d.tar``
(:func:`datagen.shards.export_generator`). Re-running the same command continues where it stopped; a
different generator, generator argument, seed or image encoding is refused with one line naming the field
(``--overwrite`` replaces the export). A YAML ``--config`` holds the same keys::

    generator:
      class_path: datagen.world.WorldCaptions
      init_args: {image_size: 64, n_objects: [1, 3], caption: mix}
    out: runs/world-data
    n: 10000
    seed: 0
    maxcount: 1000

``clip-benchmark`` writes one classification dataset (a world task family's evaluation set, or one dataset of
the MTIL image-folder layout) in CLIP_benchmark's local WebDataset layout (:mod:`datagen.clip_benchmark`), for
``clip_benchmark eval --dataset wds/<name> --dataset_root <out>`` (``docs/clip_clients.md``).

``unicorn`` runs Unicorn stages 1-2 (optionally 3) through :func:`datagen.unicorn.export.export_unicorn`
(its docstring has the sample, drop, resume and ``--concurrency`` semantics). The generator and its text
backend are given by ``class_path`` / ``init_args`` exactly as in the Lightning configs (jsonargparse),
see ``configs/unicorn/datagen_*.yaml``; ``--resume`` continues an export, ``datagen_run.json`` must match.
``--concurrency K`` generates K samples at once in threads (HTTP backends; the world writer and the
transformers backend keep state across calls and refuse it).

This module imports nothing heavy at import time (no torch, numpy or webdataset): ``--help`` of a kind
answers before any generator module is imported. The export engines live in :mod:`datagen.shards.export`
and :mod:`datagen.unicorn.export`; their names used to live here and still resolve (lazily) from here.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any, Literal, Protocol

from datagen.errors import config_paths
from models.io import atomic_write_text

SUBCOMMANDS = {
    "world": "any generator (default: the scene world's WorldCaptions) -> resumable WebDataset shards",
    "unicorn": "Unicorn stages 1-2 (optionally 3) -> WebDataset shards",
    "clip-benchmark": "a world task family or an MTIL image folder -> CLIP_benchmark's wds/ layout",
}
DEFAULT_WORLD_GENERATOR = "datagen.world.WorldCaptions"
CONFIG_FILE = "datagen_config.yaml"  # the fully resolved command-line config

# names that lived in this module before the export engine moved out (resolved on first use, see __getattr__)
_MOVED = {name: "datagen.unicorn.export" for name in (
    "DROPS_FILE", "PREFIX", "RUN_FILE", "ConcurrentGeneratorStream", "RejectLog", "export_unicorn", "format_summary",
    "run_identity", "_Guarded", "_read_existing", "_stats")}
_MOVED.update(Stage3="datagen.unicorn.stage3", TextEmbedder="datagen.unicorn.stage3")


def __getattr__(name: str) -> Any:
    if name in _MOVED:
        from importlib import import_module

        return getattr(import_module(_MOVED[name]), name)
    if name == "_diff":
        from datagen.shards.export import diff_json

        return diff_json
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class SampleGeneratorLike(Protocol):
    """What ``world --generator`` accepts: a :class:`datagen.stream.SampleGenerator`, or any class with a
    ``generate(rng, index)`` method. A protocol rather than the class itself, so that building the parser
    imports no torch; unannotated and positional-only, so that any annotations and parameter names match."""

    def generate(self, rng, index, /): ...  # noqa: ANN001, ANN201


# ------------------------------------------------------------------------------------------------
# parsers
# ------------------------------------------------------------------------------------------------
def build_parser():
    """The ``synthloop datagen unicorn`` parser (imports the generator, hence torch)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    from datagen.unicorn.stage3 import Stage3
    from datagen.unicorn.stages import UnicornText

    p = ArgumentParser(prog="synthloop datagen unicorn", exit_on_error=False, allow_abbrev=False,
                       description="Unicorn stages 1-2 (optionally 3) -> resumable WebDataset shards.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML config (keys as below)")
    p.add_argument("--generator", type=UnicornText, required=True,
                   help="class_path/init_args of the generator (datagen.unicorn.stages.UnicornText)")
    p.add_argument("--out", type=str, required=True, help="output directory of the shards")
    p.add_argument("--n", type=int, required=True, help="kept samples to write (in total, resumed ones included)")
    p.add_argument("--seed", type=int, default=0, help="stream seed: sample i is a pure function of (seed, i)")
    p.add_argument("--resume", action=ActionYesNo, default=False,
                   help="continue the export in --out (complete shards are kept, not regenerated)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False, help="replace an export in --out")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.add_argument("--image_format", type=Literal["jpg", "png"], default="jpg",
                   help="format of rendered images (generator.render_size only)")
    p.add_argument("--concurrency", type=int, default=1,
                   help="samples generated at once in threads (HTTP backends only)")
    p.add_argument("--max_consecutive_drops", type=int, default=1000,
                   help="stop when this many samples in a row are rejected (a broken backend or prompt)")
    p.add_argument("--stage3", type=Stage3 | None, default=None,
                   help="also store CLIP text embeddings of the captions (stage3.clip_model, "
                        "stage3.clip_checkpoint, ...)")
    p.add_argument("--progress", action=ActionYesNo, default=True, help="tqdm progress bar")
    p.add_argument("--dry_run", action=ActionYesNo, default=False,
                   help="build generator and backend, check the backend is reachable, print the config, stop")
    return p


def build_world_parser(help_only: bool = False):
    """The ``synthloop datagen world`` parser. ``help_only``: no default generator (resolving it imports it)."""
    from jsonargparse import ActionConfigFile, ActionYesNo, ArgumentParser

    p = ArgumentParser(prog="synthloop datagen world", exit_on_error=False, allow_abbrev=False,
                       description="Any sample generator (default: the scene world's WorldCaptions) -> resumable "
                                   "WebDataset shards. Re-running the same command continues the export.")
    p.add_argument("--config", action=ActionConfigFile, help="YAML config (keys as below)")
    p.add_argument("--generator", type=SampleGeneratorLike,
                   default=None if help_only else {"class_path": DEFAULT_WORLD_GENERATOR},
                   help=f"class_path/init_args of a datagen.stream.SampleGenerator (default: {DEFAULT_WORLD_GENERATOR} "
                        f"with its defaults), e.g. --generator.class_path datagen.world.WorldQA "
                        f"--generator.init_args.image_size 64")
    p.add_argument("--out", type=str, required=True, help="output directory of the shards")
    p.add_argument("--n", type=int, required=True, help="kept samples to write (in total, earlier runs' included)")
    p.add_argument("--seed", type=int, default=0, help="stream seed: sample i is a pure function of (seed, i)")
    p.add_argument("--maxcount", type=int, default=1000, help="samples per shard")
    p.add_argument("--image_format", type=Literal["jpg", "png"], default="jpg", help="encoding of image fields")
    p.add_argument("--jpeg_quality", type=int, default=95, help="JPEG quality (image_format jpg)")
    p.add_argument("--overwrite", action=ActionYesNo, default=False,
                   help="replace the export in --out (else a differing one is refused)")
    p.add_argument("--max_consecutive_drops", type=int, default=1000,
                   help="stop when this many samples in a row are rejected (a broken generator)")
    p.add_argument("--progress", action=ActionYesNo, default=True, help="tqdm progress bar")
    p.add_argument("--dry_run", action=ActionYesNo, default=False,
                   help="build the generator and one sample, print the config, stop")
    return p


def build_clip_benchmark_parser():
    """The ``synthloop datagen clip-benchmark`` parser (argparse: --help answers before torch is imported)."""
    import argparse

    from models.errors import positive_int

    p = argparse.ArgumentParser(
        prog="synthloop datagen clip-benchmark", allow_abbrev=False,
        description="Write one classification dataset in CLIP_benchmark's local WebDataset layout "
                    "(<out>/<split>/{0..N-1}.tar + nshards.txt, classnames.txt, zeroshot_classification_templates.txt) "
                    "for `clip_benchmark eval --dataset wds/<name> --dataset_root <out>`.")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--family", help="a world task family (shape, color, count, material, size, relation, digits)")
    src.add_argument("--image_folder", metavar="ROOT", help="root of the MTIL image-folder layout (docs/mtil.md); "
                                                            "with --dataset")
    p.add_argument("--dataset", help="dataset folder under --image_folder (e.g. Aircraft)")
    p.add_argument("--out", required=True, help="output directory (CLIP_benchmark's --dataset_root)")
    p.add_argument("--split", choices=("test", "val", "train"), default="test",
                   help="split to write, and CLIP_benchmark's --split (default test, the split synthloop's own "
                        "validation scores; val: world families only)")
    p.add_argument("--n_per_class", type=positive_int, default=None,
                   help="world: images per class (default 40 = synthloop's own validation, eval_per_class)")
    p.add_argument("--seed", type=int, default=None,
                   help="world: evaluation-set seed (default 1234 = eval_seed); folders: seed of --max_per_class's "
                        "subset (default 0)")
    p.add_argument("--image_size", type=positive_int, default=None,
                   help="world, required: rendered size = the model's input size (32 for synthloop-tiny-vit32, "
                        "the model's vision_cfg.image_size), the size synthloop's own validation renders at")
    p.add_argument("--image_format", choices=("png", "webp", "jpg"), default=None,
                   help="world: image encoding (default png; webp is lossless; jpg is lossy). Folders copy their files")
    p.add_argument("--max_per_class", type=positive_int, default=None,
                   help="folders: at most this many images per class (default: all)")
    p.add_argument("--maxcount", type=positive_int, default=1000, help="images per tar shard (default 1000)")
    p.add_argument("--overwrite", action="store_true", help="replace the split if --out already has it")
    return p


def clip_benchmark_main(argv: list[str]) -> dict[str, Any]:
    from models.errors import UserError

    p = build_clip_benchmark_parser()
    args = p.parse_args(argv)
    world_only = ("n_per_class", "image_size", "image_format")
    if args.family is not None:
        if args.dataset is not None:
            raise UserError("--dataset: only with --image_folder (a world family is named by --family)")
        if args.max_per_class is not None:
            raise UserError("--max_per_class: only with --image_folder (world families take --n_per_class)")
        from datagen.world import get_task_family

        get_task_family(args.family, "--family")  # an unknown family is named first
        if args.image_size is None:
            raise UserError("--image_size: required with --family: the model's input size (e.g. 32 for "
                            "synthloop-tiny-vit32), which synthloop's own validation renders the family at")
        from datagen.clip_benchmark import DEFAULT_N_PER_CLASS, DEFAULT_SEED, export_world_family, format_summary

        summary = export_world_family(
            args.family, args.out, n_per_class=args.n_per_class or DEFAULT_N_PER_CLASS,
            seed=DEFAULT_SEED if args.seed is None else args.seed, image_size=args.image_size,
            split=args.split, image_format=args.image_format or "png", maxcount=args.maxcount,
            overwrite=args.overwrite)
        name = args.family
    else:
        if not args.dataset:
            raise UserError("--dataset: required with --image_folder (a dataset folder under it, e.g. Aircraft)")
        given = [f"--{k}" for k in world_only if getattr(args, k) is not None]
        if given:
            raise UserError(f"{given[0]}: only with --family (image folders are copied as they are)")
        if args.split == "val":
            raise UserError("--split: val only with --family (the MTIL image-folder layout has train and test)")
        from datagen.clip_benchmark import export_image_folder, format_summary

        summary = export_image_folder(args.image_folder, args.dataset, args.out, split=args.split,
                                      max_per_class=args.max_per_class, seed=args.seed or 0,
                                      maxcount=args.maxcount, overwrite=args.overwrite)
        name = args.dataset
    print(format_summary(summary, name))
    return summary


def _fail(argv: list[str], key: str | None, message: str) -> SystemExit:
    configs = config_paths(argv)
    where = f" in {', '.join(configs)}" if configs else ""
    return SystemExit(f"synthloop: config error{where}: {key + ': ' if key else ''}{message}")


def _config_classes(cfg) -> list[tuple[str, str, set[str]]]:
    """``(key path, class_path, init_args keys)`` of every class in a parsed config, outermost first."""
    out: list[tuple[str, str, set[str]]] = []

    def walk(node, path: str) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("class_path"), str):
                args = node.get("init_args") if isinstance(node.get("init_args"), dict) else {}
                out.append((path, node["class_path"], set(args)))
                for k, v in args.items():
                    walk(v, f"{path}.init_args.{k}")
                return
            for k, v in node.items():
                walk(v, f"{path}.{k}" if path else str(k))
        elif isinstance(node, (list, tuple)):
            for i, v in enumerate(node):
                walk(v, f"{path}[{i}]")

    try:
        walk(cfg.as_dict() if hasattr(cfg, "as_dict") else dict(cfg), "")
    except Exception:  # noqa: BLE001 - locating is best effort
        pass
    return out


def _chain(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception it was raised from (``__cause__`` / ``__context__``), outermost first."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop(0)
        if e is None or any(e is s for s in seen):
            continue
        seen.append(e)
        todo += [e.__cause__, e.__context__]
    return seen


def _short(class_path: str) -> str:
    return class_path.rsplit(".", 1)[-1]


def _owner(err: BaseException, classes) -> tuple[str, str, set[str]] | None:
    """The config entry whose constructor raised ``err`` (the innermost ``__init__`` frame of a config class)."""
    found = None
    tb = err.__traceback__
    while tb is not None:
        frame = tb.tb_frame
        obj = frame.f_locals.get("self") if frame.f_code.co_name == "__init__" else None
        if obj is not None:
            found = next((entry for entry in classes if _short(entry[1]) == type(obj).__name__), found)
        tb = tb.tb_next
    return found


def locate_config_error(exc: BaseException, cfg, direct: tuple[type[BaseException], ...] = ()) -> str | None:
    """One line ``key.path: what`` for a value a constructor refused while a parsed config's classes were built
    (``synthloop fit`` and ``synthloop datagen``), or None when ``exc`` is no such refusal.

    A refusal is a :class:`models.errors.UserError` anywhere in the exception chain (jsonargparse wraps it in
    its union report), or one of the ``direct`` types raised by a config class's ``__init__`` itself. Its
    message, written ``Class.arg: what; what to do`` or ``Class: arg what``, is rewritten to the argument's
    key in the config (``data.init_args.generator.init_args.n_objects: ...``); another message is prefixed
    with the key of the class that raised it."""
    import re

    from models.errors import UserError

    chain = _chain(exc)
    classes = _config_classes(cfg)
    err = next((e for e in chain if isinstance(e, UserError)), None)
    for e in chain if err is None and direct else ():
        tb = e.__traceback__
        while tb is not None and tb.tb_next is not None:
            tb = tb.tb_next
        if (isinstance(e, direct) and tb is not None and tb.tb_frame.f_code.co_name == "__init__"
                and "jsonargparse" not in tb.tb_frame.f_code.co_filename and _owner(e, classes) is not None):
            err = e
            break
    if err is None:
        return None
    msg = " ".join((str(err.args[0]) if isinstance(err, KeyError) and err.args else str(err)).split())
    owner = _owner(err, classes)

    def entry_of(name: str):  # the constructor that raised, else the first config class of that name
        if owner is not None and _short(owner[1]) == name:
            return owner
        return next((e for e in classes if _short(e[1]) == name), None)

    m = re.match(r"([A-Z]\w*)\.(\w+): (.*)$", msg)  # "Class.arg: what is wrong; what to do"
    if m is not None and (entry := entry_of(m.group(1))) is not None:
        return f"{entry[0]}.init_args.{m.group(2)}: {m.group(3)}"
    m = re.match(r"([A-Z]\w*): (.*)$", msg)  # "Class: arg must be ..." or "Class: what"
    if m is not None and (entry := entry_of(m.group(1))) is not None:
        arg, _, rest = m.group(2).partition(" ")
        if arg in entry[2] and rest:
            return f"{entry[0]}.init_args.{arg}: {rest}"
        return f"{entry[0]}: {m.group(2)}"
    return f"{owner[0]}: {msg}" if owner is not None else msg


def _check_backend(generator: Any, concurrency: int, argv: list[str]) -> None:
    """Fail now, in one line, when the backend cannot work (unreachable server, missing local model)."""
    from datagen.text import TransformersBackend, WorldWriter

    backend = getattr(generator, "backend", None)
    if concurrency > 1 and isinstance(backend, (WorldWriter, TransformersBackend)):
        why = "the scenes bound to seeds" if isinstance(backend, WorldWriter) else "the global torch RNG it seeds"
        raise _fail(argv, "concurrency", f"{type(backend).__name__} is not thread-safe ({why} are shared across "
                                         f"calls): use --concurrency 1")
    try:
        if hasattr(backend, "check"):  # OpenAIHTTPBackend: GET /v1/models
            backend.check()
        elif hasattr(backend, "load"):  # TransformersBackend: load the local model now
            backend.load()
    except Exception as exc:  # noqa: BLE001 -- one clear line instead of a traceback per sample
        hint = ""
        path = getattr(backend, "model_path", None)
        if path is not None and not os.path.exists(path):
            hint = (f"model_path {path!r} is not a local directory (a real local chat model is needed, or a hub id "
                    f"already in the local cache); ")
        raise SystemExit(f"synthloop datagen: backend {type(backend).__name__} is not usable: {hint}"
                         f"{' '.join(str(exc).split())[:400]}") from None


def _parse(parser, argv: list[str]):
    """Parse and instantiate; a config problem becomes one ``SystemExit`` line."""
    from jsonargparse import ArgumentError

    for path in config_paths(argv):
        if not os.path.isfile(path):
            raise SystemExit(f"synthloop: error: config file {path!r} does not exist")
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as exc:
        from datagen.errors import config_error_line

        raise _fail(argv, None, config_error_line(exc)) from None
    try:
        init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    except Exception as exc:
        line = locate_config_error(exc, cfg)  # a UserError: `generator.init_args.n_objects: ...`
        if line is not None:
            raise _fail(argv, None, line) from None
        if not isinstance(exc, (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError)):
            raise
        raise _fail(argv, "generator", f"{type(exc).__name__}: {' '.join(str(exc).split())}") from None
    return cfg, init


def parse_config(path: str | os.PathLike, kind: str | None = None, argv: list[str] | None = None):
    """Parse and build a ``synthloop datagen <kind>`` YAML config without running anything: ``(cfg, init)``.

    ``kind`` defaults to ``unicorn`` when the config's generator is ``UnicornText``, else ``world``.
    """
    path = os.fspath(path)
    if kind is None:
        import yaml

        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f) or {}
        gen = raw.get("generator") if isinstance(raw, dict) else None
        class_path = gen.get("class_path", "") if isinstance(gen, dict) else str(gen or "")
        kind = "unicorn" if class_path.rsplit(".", 1)[-1] == "UnicornText" else "world"
    if kind not in ("world", "unicorn"):  # the YAML-configured kinds (clip-benchmark takes options only)
        raise ValueError(f"kind must be one of world, unicorn, got {kind!r}")
    parser = build_parser() if kind == "unicorn" else build_world_parser()
    return _parse(parser, ["--config", path, *(argv or [])])


# ------------------------------------------------------------------------------------------------
# the kinds
# ------------------------------------------------------------------------------------------------
def unicorn_main(argv: list[str]) -> dict[str, Any] | None:
    parser = build_parser()
    cfg, init = _parse(parser, argv)
    for bad, ok, want in (("n", cfg.n >= 0, ">= 0"), ("maxcount", cfg.maxcount >= 1, ">= 1"),
                          ("concurrency", cfg.concurrency >= 1, ">= 1"),
                          ("max_consecutive_drops", cfg.max_consecutive_drops >= 1, ">= 1")):
        if not ok:
            raise _fail(argv, bad, f"must be {want}, got {getattr(cfg, bad)}")
    _check_backend(init.generator, cfg.concurrency, argv)
    dumped = parser.dump(cfg)
    if cfg.dry_run:
        print(dumped)
        shown = {k: v for k, v in init.generator.config().items() if not k.endswith("_prompt")}
        print(f"synthloop datagen: dry run ok: generator {json.dumps(shown, default=str)}")
        return None
    from datagen.unicorn.export import export_unicorn, format_summary, run_identity

    _check_out(argv, cfg.out)
    # the refusals export_unicorn starts with, first: a refused run must leave datagen_config.yaml as it was
    from datagen.shards.export import PREFIX, check_resumable
    from datagen.shards.writer import _existing_shards

    existing = _existing_shards(cfg.out, PREFIX)
    if existing and not (cfg.resume or cfg.overwrite):
        raise FileExistsError(f"{cfg.out} already holds {len(existing)} shard(s): pass --resume to continue that "
                              f"export, --overwrite to replace it, or choose another --out")
    if cfg.resume and existing:
        check_resumable(cfg.out, run_identity(init.generator, cfg.seed, init.stage3), PREFIX)
    config_path = os.path.join(cfg.out, CONFIG_FILE)
    before = None
    if os.path.isfile(config_path):
        with open(config_path, "rb") as f:
            before = f.read()
    atomic_write_text(config_path, dumped)
    try:
        summary = export_unicorn(init.generator, cfg.out, cfg.n, seed=cfg.seed, resume=cfg.resume,
                                 overwrite=cfg.overwrite, maxcount=cfg.maxcount, image_format=cfg.image_format,
                                 stage3=init.stage3, concurrency=cfg.concurrency,
                                 max_consecutive_drops=cfg.max_consecutive_drops, progress=cfg.progress)
    except (FileExistsError, RuntimeError) as exc:  # refused later (a damaged shard): keep the old config
        if isinstance(exc, FileExistsError) or str(exc).startswith("cannot resume"):
            if before is None:
                os.remove(config_path)
            else:
                from models.io import atomic_write

                atomic_write(config_path, before)
        raise
    print(format_summary(summary))
    return summary


def _check_out(argv: list[str], out: str) -> None:
    """``--out`` must be (or become) a writable directory: else one line naming it."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise _fail(argv, "out", f"{out} is a file, not a directory; give a directory for the shards")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as exc:
        raise _fail(argv, "out", f"cannot create directory {out} ({exc.strerror or exc}); give a directory you "
                                 f"can write to") from None
    if not os.access(out, os.W_OK | os.X_OK):
        raise _fail(argv, "out", f"directory {out} is not writable; give a directory you can write to")


def world_main(argv: list[str]) -> dict[str, Any] | None:
    parser = build_world_parser(help_only=any(a in ("-h", "--help") for a in argv))
    cfg, init = _parse(parser, argv)
    for bad, ok, want in (("n", cfg.n >= 0, ">= 0"), ("maxcount", cfg.maxcount >= 1, ">= 1"),
                          ("jpeg_quality", 1 <= cfg.jpeg_quality <= 100, "in 1..100"),
                          ("max_consecutive_drops", cfg.max_consecutive_drops >= 1, ">= 1")):
        if not ok:
            raise _fail(argv, bad, f"must be {want}, got {getattr(cfg, bad)}")
    generator = init.generator
    init_args = getattr(cfg.generator, "init_args", None)
    gen_args = init_args.as_dict() if hasattr(init_args, "as_dict") else dict(init_args or {})
    dumped = parser.dump(cfg)
    name = f"{type(generator).__module__}.{type(generator).__qualname__}"
    if cfg.dry_run:
        from datagen.generator import sample_rng

        sample = generator.generate(sample_rng(cfg.seed, 0), 0)
        print(dumped)
        fields = ", ".join(f"{k}: {type(v).__name__}" for k, v in sample.items()) if isinstance(sample, dict) else "?"
        print(f"synthloop datagen: dry run ok: generator {name}, sample 0 has {{{fields}}}")
        return None
    from datagen.shards.export import export_generator

    _check_out(argv, cfg.out)
    summary = export_generator(generator, cfg.out, cfg.n, seed=cfg.seed, maxcount=cfg.maxcount,
                               image_format=cfg.image_format, jpeg_quality=cfg.jpeg_quality, overwrite=cfg.overwrite,
                               generator_config=gen_args, progress=cfg.progress,
                               max_consecutive_drops=cfg.max_consecutive_drops, command="synthloop datagen world",
                               config_text=dumped, config_file=CONFIG_FILE)
    print(format_world_summary(summary))
    return summary


def format_world_summary(s: dict[str, Any]) -> str:
    """A few human lines from :func:`datagen.shards.export_generator`'s summary."""
    kept = s["total"]
    rate = f"{100 * kept / s['attempted']:.1f}%" if s["attempted"] else "-"
    lines = [f"wrote {s['written']} samples ({s['resumed']} already there) -> {s['total']} in {s['shards']} shard(s): "
             f"{s['pattern']}",
             f"{s['samples_per_s']} samples/s over {s['seconds']:.1f} s; kept {kept} of {s['attempted']} attempted "
             f"({rate}), dropped {s['dropped']}"]
    if s["resumed"] > s["n"]:
        lines.append(f"{s['resumed']} samples were already there, more than --n {s['n']}: nothing generated")
    return "\n".join("synthloop datagen: " + line for line in lines)


# ------------------------------------------------------------------------------------------------
# dispatch
# ------------------------------------------------------------------------------------------------
KINDS = {"world": world_main, "unicorn": unicorn_main, "clip-benchmark": clip_benchmark_main}


def usage() -> str:
    lines = ["usage: synthloop datagen {%s} [--help] ..." % ",".join(SUBCOMMANDS), ""]
    lines += [f"  {name:14s} {what}" for name, what in SUBCOMMANDS.items()]
    lines += ["", "Each kind has its own --help."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any] | None:
    """``synthloop datagen <kind> ...`` (also ``python -m datagen.cli <kind> ...``); returns the summary."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return None
    kind, rest = argv[0], argv[1:]
    if kind not in SUBCOMMANDS:
        import difflib

        close = difflib.get_close_matches(kind, SUBCOMMANDS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise SystemExit(f"synthloop datagen: error: unknown kind {kind!r}{hint}; choose one of: "
                         f"{', '.join(SUBCOMMANDS)}")
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return KINDS[kind](rest)
    except (FileExistsError, RuntimeError) as exc:
        if isinstance(exc, FileExistsError) or str(exc).startswith("cannot resume"):
            raise SystemExit(f"synthloop datagen: error: {exc}") from None
        raise


if __name__ == "__main__":
    main()
