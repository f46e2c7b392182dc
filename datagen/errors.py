"""One-line configuration errors, shared by every ``synthloop`` subcommand (data and training side)."""

from __future__ import annotations

import re


def config_error_line(exc: BaseException) -> str:
    """Boil jsonargparse's nested union/class_path report down to ``key.path: what is wrong``."""
    msg = " ".join(str(exc).split())
    keys = re.findall(r'(?:Parser key|Key) "([^"]+)"', msg)
    path: list[str] = []
    for k in keys:  # nested parsers report relative keys; drop a repeated prefix
        if not path or not k.startswith(path[-1] + "."):
            path.append(k)
        else:
            path[-1] = k
    # the innermost explanation: after the last class_path problem, before the NoneType alternative
    detail = msg
    if "Problem with given class_path" in msg:
        detail = re.split(r"Problem with given class_path '[^']+': ", msg)[-1]
    detail = re.split(r" - Expected a <class 'NoneType'>", detail)[0]
    detail = re.sub(r'(?:Parser key|Key) "[^"]+": ', "", detail)
    detail = re.sub(r"Does not validate against any of the Union subtypes Subtypes: \[[^\]]*\] Errors: - ", "",
                    detail)
    where = ".".join(path)
    line = f"{where}: {detail}" if where else detail
    return line if len(line) < 400 else line[:400] + " ..."


def config_paths(argv: list[str]) -> list[str]:
    """The config files a command line names (``--config F``, ``-c F``, ``--config=F``), in order."""
    paths = []
    for i, arg in enumerate(argv):
        if arg in ("--config", "-c") and i + 1 < len(argv):
            paths.append(argv[i + 1])
        elif arg.startswith("--config="):
            paths.append(arg.split("=", 1)[1])
    return paths
