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

from models.io import atomic_write_text

SUBCOMMANDS = {
    "world": "any generator (default: the scene world's WorldCaptions) -> resumable WebDataset shards",
    "unicorn": "Unicorn stages 1-2 (optionally 3) -> WebDataset shards",
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

    p = ArgumentParser(prog="synthloop datagen unicorn", exit_on_error=False,
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

    p = ArgumentParser(prog="synthloop datagen world", exit_on_error=False,
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


def _config_paths(argv: list[str]) -> list[str]:
    out = []
    for i, a in enumerate(argv):
        if a in ("--config", "-c") and i + 1 < len(argv):
            out.append(argv[i + 1])
        elif a.startswith("--config="):
            out.append(a.split("=", 1)[1])
    return out


def _fail(argv: list[str], key: str | None, message: str) -> SystemExit:
    configs = _config_paths(argv)
    where = f" in {', '.join(configs)}" if configs else ""
    return SystemExit(f"synthloop: config error{where}: {key + ': ' if key else ''}{message}")


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

    for path in _config_paths(argv):
        if not os.path.isfile(path):
            raise SystemExit(f"synthloop: error: config file {path!r} does not exist")
    try:
        cfg = parser.parse_args(argv)
    except ArgumentError as exc:
        from datagen.errors import config_error_line

        raise _fail(argv, None, config_error_line(exc)) from None
    try:
        init = parser.instantiate(cfg) if hasattr(parser, "instantiate") else parser.instantiate_classes(cfg)
    except (ValueError, TypeError, FileNotFoundError, ImportError, AttributeError) as exc:
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
    if kind not in SUBCOMMANDS:
        raise ValueError(f"kind must be one of {', '.join(SUBCOMMANDS)}, got {kind!r}")
    parser = build_parser() if kind == "unicorn" else build_world_parser()
    return _parse(parser, ["--config", path, *(argv or [])])


# ------------------------------------------------------------------------------------------------
# the kinds
# ------------------------------------------------------------------------------------------------
def unicorn_main(argv: list[str]) -> dict[str, Any] | None:
    parser = build_parser()
    cfg, init = _parse(parser, argv)
    if cfg.n < 0 or cfg.maxcount < 1 or cfg.concurrency < 1:
        bad = "n" if cfg.n < 0 else "maxcount" if cfg.maxcount < 1 else "concurrency"
        raise _fail(argv, bad, f"must be {'>= 0' if bad == 'n' else '>= 1'}, got {getattr(cfg, bad)}")
    _check_backend(init.generator, cfg.concurrency, argv)
    dumped = parser.dump(cfg)
    if cfg.dry_run:
        print(dumped)
        shown = {k: v for k, v in init.generator.config().items() if not k.endswith("_prompt")}
        print(f"synthloop datagen: dry run ok: generator {json.dumps(shown, default=str)}")
        return None
    from datagen.unicorn.export import export_unicorn, format_summary

    os.makedirs(cfg.out, exist_ok=True)
    atomic_write_text(os.path.join(cfg.out, CONFIG_FILE), dumped)
    summary = export_unicorn(init.generator, cfg.out, cfg.n, seed=cfg.seed, resume=cfg.resume,
                             overwrite=cfg.overwrite, maxcount=cfg.maxcount, image_format=cfg.image_format,
                             stage3=init.stage3, concurrency=cfg.concurrency,
                             max_consecutive_drops=cfg.max_consecutive_drops, progress=cfg.progress)
    print(format_summary(summary))
    return summary


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
KINDS = {"world": world_main, "unicorn": unicorn_main}


def usage() -> str:
    lines = ["usage: synthloop datagen {%s} [--help] ..." % ",".join(SUBCOMMANDS), ""]
    lines += [f"  {name:10s} {what}" for name, what in SUBCOMMANDS.items()]
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
        raise SystemExit(f"synthloop datagen: error: unknown kind {kind!r}; choose one of: {', '.join(SUBCOMMANDS)}")
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
