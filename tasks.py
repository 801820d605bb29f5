#!/usr/bin/env python3
"""Set up and run shapecheck on a fresh clone.

    python3 tasks.py demo               explain the seed's broken CNN, then the fixed one
    python3 tasks.py test [pytest args] run the test suite (in .venv)
    python3 tasks.py lint               ruff (lint + format check) and mypy (in .venv)
    python3 tasks.py screenshot         docs/notebook.png, the README's picture (needs chromium)
    python3 tasks.py compat 2.4.1 [pytest args]
                                        the whole suite on another torch, in .venv-torch-2.4.1
    python3 tasks.py floor              the floor smoke: the oldest torch pyproject.toml
                                        admits, on the tests in FLOOR_SMOKE

Each command creates its virtual environment (once), installs shapecheck with what the command
needs, and runs it. torch comes from PyPI as usual; a torch already in ``.venv`` is kept.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
EXTRAS = {"demo": "examples", "test": "test,examples,zoo", "lint": "test,examples,zoo,dev",
          "screenshot": "notebook"}  # fmt: skip

#: What the floor smoke runs on the oldest admitted torch: import and demo, and the core of
#: explain, the diagnoses and their fixes, shapecheck.testing, clarify and the CLI. The whole
#: suite on any version: ``python3 tasks.py compat VERSION``.
FLOOR_SMOKE = (
    "tests/test_api.py", "tests/test_compat.py", "tests/test_seed.py", "tests/test_explain.py",
    "tests/test_rules.py", "tests/test_repair.py", "tests/test_apply.py",
    "tests/test_testing.py", "tests/test_clarify.py", "tests/test_cli.py",
    "tests/test_no_surprises.py", "tests/test_notebook.py", "tests/test_tracer_records.py",
)  # fmt: skip


def _python(env: Path) -> Path:
    return env / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _run(*args: str | Path) -> int:
    print("+", " ".join(str(a) for a in args), flush=True)
    return subprocess.call([str(a) for a in args], cwd=ROOT)


def _pip(env: Path, *args: str) -> None:
    code = _run(_python(env), "-m", "pip", "install", "--disable-pip-version-check", "-q", *args)
    if code:
        sys.exit(code)


def _setup(extras: str, env: Path = VENV, torch: str | None = None) -> Path:
    """``env`` with shapecheck and ``extras`` installed (and ``torch==VERSION`` first)."""
    if not _python(env).exists():
        venv.EnvBuilder(with_pip=True).create(env)
    stamp = env / f".installed-{extras.replace(',', '-')}"
    pyproject = ROOT / "pyproject.toml"
    if stamp.exists() and stamp.stat().st_mtime >= pyproject.stat().st_mtime:
        return _python(env)
    if torch is not None:
        _pip(env, f"torch=={torch}")
    _pip(env, "-e", f".[{extras}]")
    stamp.touch()
    return _python(env)


def floor_version() -> str:
    """The oldest torch release line that ``pyproject.toml`` admits, as a pip pin: ``2.4.*``."""
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"torch>=(\d+\.\d+)(?:\.\d+)?"', text)
    if found is None:
        sys.exit("pyproject.toml declares no 'torch>=X.Y' dependency")
    return f"{found.group(1)}.*"


def _compat(version: str, pytest_args: list[str]) -> int:
    if not re.fullmatch(r"\d+\.\d+(\.\d+|\.\*)?", version):
        print(f"tasks.py compat: {version!r} is not a torch version such as 2.4.1")
        return 2
    env = ROOT / f".venv-torch-{version.replace('*', 'x')}"
    python = _setup("test,examples", env, torch=version)
    return _run(python, "-m", "pytest", "-p", "no:cacheprovider", *pytest_args)


def _lint(python: Path) -> int:
    checks = [("ruff", "check", "."), ("ruff", "format", "--check", "."), ("mypy",)]
    return max(_run(python, "-m", *check) for check in checks)


def main(argv: list[str]) -> int:
    command, rest = (argv[0], argv[1:]) if argv else ("", [])
    if command == "compat" and rest:
        return _compat(rest[0], rest[1:])
    if command == "floor":
        return _compat(floor_version(), [*FLOOR_SMOKE, *rest])
    if command not in EXTRAS:
        print(__doc__)
        return 2
    python = _setup(EXTRAS[command])
    if command == "demo":
        return _run(python, "-m", "shapecheck", "demo", *rest)
    if command == "lint":
        return _lint(python)
    if command == "screenshot":
        return _run(python, ROOT / "scripts" / "screenshot.py", *rest)
    return _run(python, "-m", "pytest", *rest)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
