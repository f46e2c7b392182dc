"""Reading a command line before LightningCLI parses it."""

from __future__ import annotations


def config_paths(argv: list[str]) -> list[str]:
    """The config files a command line names (``--config F``, ``-c F``, ``--config=F``), in order."""
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths
