"""The torch we claim: nothing newer than the floor is touched without a guard.

The floor smoke in CI (``python3 tasks.py floor``) runs part of the suite on the floor torch
itself; the test here runs on any torch: every op that the floor lacks is hidden, then every
shapecheck module is imported and the common paths are run.
"""

from __future__ import annotations

import pkgutil
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck import UsageError, _compat

ROOT = Path(__file__).resolve().parent.parent
FLOOR_OPS = Path(__file__).with_name("data") / "floor-ops.txt"

# The common paths: explain (real, dry, FLOPs, training memory, a failure with its verified
# fix kept), the testing helpers and clarify. Run once to see which torch modules they import.
_EXERCISE = """
import importlib, pkgutil, torch, shapecheck
from shapecheck.demo import seed_model, seed_model_fixed
from shapecheck.testing import assert_batch_polymorphic, assert_output_shape
for info in pkgutil.walk_packages(shapecheck.__path__, "shapecheck."):
    if info.name != "shapecheck.__main__":
        importlib.import_module(info.name)
x = torch.randn(2, 3, 32, 32)
broken = shapecheck.explain(seed_model(), x, flops=True, optimizer="adam")
assert broken.diagnoses[0].verified, broken
assert broken.diagnoses[0].apply(seed_model())(x).shape == (2, 2)
dry = shapecheck.explain(seed_model_fixed(), input_size=(2, 3, 32, 32), dry_run=True, flops=True)
assert dry.ok and dry.total_flops, dry
assert_output_shape(seed_model_fixed(), x, input_spec="B 3 H W", spec="B 2")
assert_batch_polymorphic(seed_model_fixed(), "B 3 32 32", "B 2", batch_sizes=[1, 2])
try:
    with shapecheck.clarify():
        seed_model()(x)
except RuntimeError as error:
    assert "layer by layer" in error.__notes__[0], error.__notes__
"""

# Ops the floor lacks raise AttributeError, as on the floor torch. The paths ran once before,
# so torch's own modules (which may use newer ops legitimately) are imported already; shapecheck
# is imported again, and only it sees the hidden ops.
_HIDE = """
import sys, torch
for name in [m for m in sys.modules if m == "shapecheck" or m.startswith("shapecheck.")]:
    del sys.modules[name]
floor = set(line for line in open({ops!r}).read().splitlines() if not line.startswith("#"))
packets = {{name.partition(".")[0] for name in floor}}

class Packet:
    def __init__(self, real):
        object.__setattr__(self, "_real", real)
    def __getattr__(self, name):
        real = object.__getattribute__(self, "_real")
        if name in real.overloads() and f"{{real._qualified_op_name}}.{{name}}" not in floor:
            raise AttributeError(f"{{real._qualified_op_name}}.{{name}} is newer than the floor")
        return getattr(real, name)
    def __call__(self, *args, **kwargs):
        return object.__getattribute__(self, "_real")(*args, **kwargs)

class Namespace:
    def __init__(self, real, prefix):
        self._real, self._prefix = real, prefix
    def __getattr__(self, name):
        if f"{{self._prefix}}::{{name}}" not in packets:
            raise AttributeError(f"'_OpNamespace' '{{self._prefix}}' object has no attribute "
                                 f"'{{name}}' (newer than the floor)")
        return Packet(getattr(self._real, name))

for prefix in ("aten", "prim"):
    torch.ops.__dict__[prefix] = Namespace(getattr(torch.ops, prefix), prefix)
"""


def _python(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    return done.stdout


def test_the_declared_floor_is_the_floor_the_code_and_the_op_list_know() -> None:
    text = (ROOT / "pyproject.toml").read_text()
    found = re.search(r'"torch>=(\d+)\.(\d+)"', text)
    assert found is not None, "pyproject.toml must declare torch>=X.Y"
    floor = (int(found.group(1)), int(found.group(2)))
    assert floor == _compat.FLOOR
    header = FLOOR_OPS.read_text().splitlines()[0]
    assert header.startswith(f"# torch {floor[0]}.{floor[1]}."), header


def test_every_module_and_the_common_paths_work_without_the_ops_newer_than_the_floor() -> None:
    _python(_EXERCISE + _HIDE.format(ops=str(FLOOR_OPS)) + _EXERCISE)


def test_the_hiding_would_have_caught_an_op_newer_than_the_floor() -> None:
    """The check above is not vacuous: the op that broke torch 2.4-2.8 is hidden by it."""
    floor = set(FLOOR_OPS.read_text().split())
    assert "aten::sym_is_contiguous.default" not in floor
    assert "aten::is_contiguous.default" in floor


def test_aten_ops_leaves_out_what_this_torch_lacks() -> None:
    found = _compat.aten_ops("mm", "sym_size.int", "prim::layout", "no_such_op", "mm.no_such")
    assert found == {torch.ops.aten.mm.default, torch.ops.aten.sym_size.int,
                     torch.ops.prim.layout.default}  # fmt: skip


def test_a_feature_that_needs_a_newer_torch_names_the_minimum(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_compat, "TORCH", (2, 4))
    assert _compat.torch_at_least("2.4")
    assert not _compat.torch_at_least("2.6")
    with pytest.raises(UsageError, match=r"the input-size contract needs torch >= 2\.6; this is"):
        _compat.require_torch("2.6", "the input-size contract")
    _compat.require_torch("2.4", "explain")  # the floor itself: no error


def test_every_shapecheck_module_imports_on_this_torch() -> None:
    import importlib

    names = [i.name for i in pkgutil.walk_packages(shapecheck.__path__, "shapecheck.")]
    for name in names:
        if name != "shapecheck.__main__":
            importlib.import_module(name)
    assert "shapecheck._compat" in names


def test_clarify_says_so_when_shapecheck_itself_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """A bug in shapecheck (here: an import that fails inside the hook) must not leave the
    user's error silent, nor be swallowed by torch's always_call hooks as a warning."""
    from shapecheck import _clarify

    def broken() -> bool:
        raise AttributeError("'_OpNamespace' 'aten' object has no attribute 'x'")

    monkeypatch.setattr(_clarify, "_tracing", broken)
    model = nn.Sequential(nn.Linear(4, 3), nn.Linear(4, 2))
    with pytest.raises(RuntimeError, match="cannot be multiplied") as caught, shapecheck.clarify():
        model(torch.randn(2, 4))
    notes = getattr(caught.value, "__notes__", [])
    assert notes == [
        "shapecheck could not explain this: AttributeError(\"'_OpNamespace' 'aten' object has "
        "no attribute 'x'\"); please report it"
    ]
    assert notes[0].endswith("; please report it")


def test_clarify_says_so_when_the_replay_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    from shapecheck import _clarify

    def broken(*_: object) -> None:
        raise RuntimeError("the replay broke")

    monkeypatch.setattr(_clarify, "replay", broken)
    with pytest.raises(RuntimeError, match="cannot be multiplied") as caught, shapecheck.clarify():
        nn.Linear(4, 2)(torch.randn(2, 3))
    assert caught.value.__notes__ == [
        "shapecheck could not explain this: RuntimeError('the replay broke'); please report it"
    ]
