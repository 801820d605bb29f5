"""The README's first screen is real output, and its usage snippet does what its comments say."""

from __future__ import annotations

import ast
import os
import re
from pathlib import Path

import pytest
import torch

import shapecheck
from shapecheck.demo import seed_model

README_PATH = Path(__file__).resolve().parents[1] / "README.md"
README = README_PATH.read_text(encoding="utf-8")


def _block_after(marker: str) -> str:
    start = README.index(marker)
    match = re.compile(r"```(?:text|python)\n(.*?)```", re.S).search(README, start)
    assert match is not None, f"no code block after {marker!r}"
    return match.group(1)


def test_first_screen_shows_the_real_answer_for_the_seed() -> None:
    shown = _block_after("README-ANSWER:BEGIN").rstrip("\n")
    actual = str(shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32)))
    if os.environ.get("SHAPECHECK_UPDATE_GOLDEN") == "1" and shown != actual:
        README_PATH.write_text(README.replace(shown, actual), encoding="utf-8")
        pytest.skip("README answer rewritten from the real output; review the diff")
    assert shown == actual


def test_first_screen_quotes_the_error_pytorch_raises() -> None:
    quoted = re.search(r"# (RuntimeError: .*)", README)
    assert quoted is not None
    with pytest.raises(RuntimeError) as raised:
        seed_model()(torch.randn(3, 32, 32).unsqueeze(0))
    assert quoted.group(1) == f"RuntimeError: {raised.value}"


def test_two_commands_follow_the_answer() -> None:
    after = README[README.index("README-ANSWER:END") :]
    commands = _block_after_bash(after)
    assert commands == ["python3 tasks.py demo", "python3 tasks.py test"]


def _block_after_bash(text: str) -> list[str]:
    match = re.search(r"```bash\n(.*?)```", text, re.S)
    assert match is not None
    return [line.split("#")[0].strip() for line in match.group(1).splitlines() if line.strip()]


def test_usage_snippet_lines_do_what_their_comments_say() -> None:
    match = re.search(r"```python\n(import torch, shapecheck\n.*?)```", README, re.S)
    assert match is not None
    scope: dict[str, object] = {"model": seed_model()}
    checked = 0
    for line in match.group(1).splitlines():
        code, _, comment = line.partition("#")
        if not code.strip():
            continue
        if "raise_for_failure" in code:
            with pytest.raises(RuntimeError, match="64x8 and 512x32"):
                exec(code, scope)
            continue
        exec(code, scope)
        claim = comment.strip().split("  ")[0].split(":")[0]
        if (claim and claim[0] in "'[(") or claim in ("True", "False"):
            assert eval(code, scope) == ast.literal_eval(claim), line
            checked += 1
    assert checked >= 5
    fixed = scope["fixed"]  # "a corrected copy: nn.Flatten() at index 6"
    assert isinstance(fixed, torch.nn.Sequential)
    assert isinstance(fixed[6], torch.nn.Flatten)
    assert fixed(torch.randn(2, 3, 32, 32)).shape == (2, 2)


def test_shape_contract_snippet_runs_as_written() -> None:
    match = re.search(
        r"```python\n(import torch\nfrom shapecheck.demo import .*?)```", README, re.S
    )
    assert match is not None
    scope: dict[str, object] = {}
    exec(match.group(1), scope)
    assert scope["report"].ok  # type: ignore[attr-defined]
