#!/usr/bin/env python3
"""Set up and run shapecheck on a fresh clone: `python3 tasks.py demo` or `python3 tasks.py test`.

Each command creates ``.venv`` (once), installs shapecheck with what the command needs, and
runs it. torch comes from PyPI as usual; a torch already in ``.venv`` is kept.
"""

from __future__ import annotations

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
PYTHON = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
EXTRAS = {"demo": "examples", "test": "test,examples"}


def _run(*args: str | Path) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.call([str(a) for a in args], cwd=ROOT)


def _setup(extras: str) -> None:
    if not PYTHON.exists():
        venv.EnvBuilder(with_pip=True).create(VENV)
    stamp = VENV / f".installed-{extras.replace(',', '-')}"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return
    code = _run(PYTHON, "-m", "pip", "install", "--disable-pip-version-check", "-q",
                "-e", f".[{extras}]")  # fmt: skip
    if code:
        sys.exit(code)
    stamp.touch()


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in EXTRAS:
        print(f"usage: python3 tasks.py {{{','.join(EXTRAS)}}} [extra pytest args]")
        return 2
    command, rest = argv[0], argv[1:]
    _setup(EXTRAS[command])
    if command == "demo":
        return _run(PYTHON, "-m", "shapecheck", "demo", *rest)
    return _run(PYTHON, "-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
