"""pytest plugin: shape snapshots, the ``shapes`` marker and shape-aware assertion diffs.

Registered through the ``pytest11`` entry point. Loading it imports neither torch nor
hypothesis: they are imported when a fixture or a marked test first needs them.

- fixture ``shape_snapshot(model, *inputs)``: compares the layer table with
  ``__shapes__/<test_file>/<test_name>.txt`` next to the test module; ``--shapecheck-update``
  writes or refreshes it.
- marker ``@pytest.mark.shapes(input="B 3 32 32", output="B 2", **sizes)`` on a test that
  returns a model (or takes a ``model`` fixture): runs ``assert_batch_polymorphic`` on it; with
  ``symbolic=True`` (``input="B 3 H W"``, ``example=`` or sizes ``B=4, H=32, W=32``) it runs
  ``assert_contract`` instead: one symbolic trace for every admissible size.
- ``--shapecheck-examples=N``: batch sizes hypothesis draws in that check.
- ``assert a == b`` on ``torch.Size`` or lists of shapes explains the difference by dim.
"""

from __future__ import annotations

import difflib
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from ._text import shape  # torch-free, like this plugin

if TYPE_CHECKING:
    from torch import nn

    from ._report import Report

__all__ = ["ShapeSnapshot", "configured_examples"]

_EXAMPLES: list[int | None] = []  # one entry per configured session (pytester nests them)
_STATS = pytest.StashKey[dict[str, int]]()
_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-\[\]]+")


def configured_examples() -> int | None:
    """``--shapecheck-examples`` of the running pytest session, if it was given."""
    return _EXAMPLES[-1] if _EXAMPLES else None


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("shapecheck", "shape contracts (shapecheck)")
    group.addoption(
        "--shapecheck-update",
        action="store_true",
        default=False,
        help="write or refresh the __shapes__ snapshot files of shape_snapshot.",
    )
    group.addoption(
        "--shapecheck-examples",
        type=int,
        default=None,
        metavar="N",
        help="batch sizes hypothesis draws in assert_batch_polymorphic and "
        "@pytest.mark.shapes, besides 1, 2 and 3 (default 10).",
    )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "shapes(input, output, **sizes): the test returns a model (or takes a `model` fixture) "
        "that must map the input spec to the output spec for any batch size (shapecheck); "
        "symbolic=True checks the formulas for every admissible size instead.",
    )
    examples = config.getoption("shapecheck_examples", None)
    if examples is not None and examples < 0:
        raise pytest.UsageError(f"--shapecheck-examples must be >= 0, got {examples}.")
    _EXAMPLES.append(examples)
    config.stash[_STATS] = {"written": 0, "updated": 0}


def pytest_unconfigure(config: pytest.Config) -> None:
    if _EXAMPLES:
        _EXAMPLES.pop()


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    stats = config.stash.get(_STATS, {})
    if stats.get("written") or stats.get("updated"):
        terminalreporter.write_line(
            f"shapecheck: {stats['written']} snapshot(s) written, {stats['updated']} updated"
        )


# -- shape_snapshot -----------------------------------------------------------------------------
class ShapeSnapshot:
    """Call it with a model and inputs; it compares the layer table with the stored one."""

    def __init__(self, directory: Path, name: str, update: bool, stats: dict[str, int]) -> None:
        self.directory, self.name, self.update, self.stats = directory, name, update, stats
        self.calls = 0

    def __call__(self, model: nn.Module, *inputs: Any, **forward_kwargs: Any) -> Report:
        """Run the model, then compare (or with ``--shapecheck-update`` write) the snapshot."""
        __tracebackhide__ = True
        from .testing import assert_runs

        report = assert_runs(model, *inputs, **forward_kwargs)
        self.calls += 1
        suffix = "" if self.calls == 1 else f".{self.calls}"
        self._compare(self.directory / f"{self.name}{suffix}.txt", snapshot_text(report))
        return report

    def _compare(self, path: Path, text: str) -> None:
        __tracebackhide__ = True
        old = path.read_text(encoding="utf-8") if path.exists() else None
        if old == text:
            return
        if self.update:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            self.stats["written" if old is None else "updated"] += 1
            return
        if old is None:
            raise AssertionError(
                f"no shape snapshot at {path}\nrun pytest --shapecheck-update to create it"
            )
        diff = difflib.unified_diff(
            old.splitlines(), text.splitlines(), "snapshot", "now", lineterm=""
        )
        raise AssertionError(
            f"the layer shapes differ from the snapshot {path}\n"
            + "\n".join(diff)
            + "\nrun pytest --shapecheck-update if the change is intended"
        )


def snapshot_text(report: Report) -> str:
    """The layer table plus totals and the model's input and output shapes (no device)."""
    from ._render import render_table
    from ._text import count, shapes

    return "\n".join(
        [
            render_table(report),
            "",
            f"params  {count(report.total_params)} total · "
            f"{count(report.trainable_params)} trainable",
            f"input   {shapes(report.input_shapes)} → output {shapes(report.output_shapes)}",
            "",
        ]
    )


@pytest.fixture
def shape_snapshot(request: pytest.FixtureRequest) -> ShapeSnapshot:
    """``shape_snapshot(model, *inputs)`` checks the layer table against a stored snapshot.

    Example:
        >>> def test_shapes(shape_snapshot):  # doctest: +SKIP
        ...     shape_snapshot(seed_model_fixed(), torch.randn(2, 3, 32, 32))
    """
    node = request.node
    test_file = Path(node.path)
    name = _UNSAFE.sub("_", node.nodeid.split("::", 1)[-1].replace("::", "."))
    return ShapeSnapshot(
        test_file.parent / "__shapes__" / test_file.stem,
        name,
        bool(request.config.getoption("shapecheck_update")),
        request.config.stash[_STATS],
    )


# -- @pytest.mark.shapes ------------------------------------------------------------------------
@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem: pytest.Function) -> bool | None:
    """Run a ``shapes``-marked test, then check the model it returned (or its ``model``)."""
    marker = pyfuncitem.get_closest_marker("shapes")
    if marker is None:
        return None
    __tracebackhide__ = True
    names = pyfuncitem._fixtureinfo.argnames
    result = pyfuncitem.obj(**{name: pyfuncitem.funcargs[name] for name in names})
    model = result if result is not None else pyfuncitem.funcargs.get("model")
    _check_contract(model, marker)
    return True


def _check_contract(model: object, marker: pytest.Mark) -> None:
    __tracebackhide__ = True
    from torch import nn

    from .testing import assert_batch_polymorphic, assert_contract

    if not isinstance(model, nn.Module):
        pytest.fail(
            "@pytest.mark.shapes needs the test to return an nn.Module or take a "
            f"`model` fixture; got {type(model).__name__}.",
            pytrace=False,
        )
    kwargs = dict(marker.kwargs)
    if marker.args or "input" not in kwargs or "output" not in kwargs:
        pytest.fail(
            "use @pytest.mark.shapes(input='B 3 32 32', output='B 2'), with keywords; "
            f"got args {marker.args} and keywords {sorted(kwargs)}.",
            pytrace=False,
        )
    if kwargs.pop("symbolic", False):
        assert_contract(model, kwargs.pop("input"), kwargs.pop("output"), **kwargs)
    else:
        assert_batch_polymorphic(model, kwargs.pop("input"), kwargs.pop("output"), **kwargs)


# -- shape-aware assertion diffs ------------------------------------------------------------------
def pytest_assertrepr_compare(
    config: pytest.Config, op: str, left: object, right: object
) -> list[str] | None:
    """Explain ``==`` between ``torch.Size`` values or between lists of shapes, dim by dim.

    Plain tuples of ints are left to pytest: they are often not shapes.
    """
    if op != "==":
        return None
    if _is_shape(left) and _is_shape(right) and (_is_size(left) or _is_size(right)):
        return [f"shape {shape(left)} == {shape(right)}", *_shape_lines(left, right)]  # type: ignore[arg-type]
    if _is_shape_list(left) and _is_shape_list(right):
        return _list_lines(left, right)  # type: ignore[arg-type]
    return None


def _is_size(value: object) -> bool:
    return type(value).__name__ == "Size" and type(value).__module__ == "torch"


def _is_shape(value: object) -> bool:
    return isinstance(value, tuple) and all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    )


def _is_shape_list(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(_is_shape(v) for v in value)


def _shape_lines(left: Sequence[int], right: Sequence[int]) -> list[str]:
    lines = []
    if len(left) != len(right):
        lines.append(f"  rank   {len(left)} != {len(right)}")
    lines += [
        f"  dim {i}  {a} != {b}"
        for i, (a, b) in enumerate(zip(left, right, strict=False))
        if a != b
    ]
    a, b = math.prod(left), math.prod(right)
    if len(left) != len(right) and a == b:
        lines.append(
            f"  numel  {a:,} == {b:,}: the same elements in another layout "
            "(a missing or extra flatten/view?)"
        )
    elif a != b:
        lines.append(f"  numel  {a:,} != {b:,}")
    return lines


def _list_lines(left: list[tuple[int, ...]], right: list[tuple[int, ...]]) -> list[str]:
    lines = [f"shapes [{', '.join(map(shape, left))}] == [{', '.join(map(shape, right))}]"]
    if len(left) != len(right):
        lines.append(f"  {len(left)} shape(s) != {len(right)}")
    for index, (a, b) in enumerate(zip(left, right, strict=False)):
        if tuple(a) != tuple(b):
            lines.append(f"  shape {index}: {shape(a)} != {shape(b)}")
            lines += ["  " + line for line in _shape_lines(a, b)]
    return lines
