"""Shape-contract assertions for tests, with or without pytest.

Each assertion runs the model through :func:`shapecheck.explain`; a broken contract raises
``AssertionError`` whose message is the explanation: what did not match and why (with the
symbol bindings, "B=4 from input 0 dim 0, but layer '6' has 64 at dim 0"), then the layer table,
the failing layer and its diagnosis. Hypothesis is optional: only
:func:`assert_batch_polymorphic` uses it, and falls back to fixed batch sizes without it.

Example:
    >>> import torch
    >>> from shapecheck.testing import assert_output_shape
    >>> _ = assert_output_shape(torch.nn.Linear(4, 2), torch.randn(3, 4), spec="B 2")
"""

from __future__ import annotations

import sys
import textwrap
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeAlias

import torch
from torch import nn

from ._errors import UsageError
from ._explain import explain
from ._independence import check_independence, random_like
from ._inputs import parse_dtype, require_module
from ._params import param_totals
from ._report import Report
from ._spec import Bindings, Mismatch, Spec, SpecLike, match, parse_spec
from ._text import count, shape, shapes

if TYPE_CHECKING:
    from ._contract import Contract

__all__ = [
    "assert_batch_polymorphic",
    "assert_contract",
    "assert_output_shape",
    "assert_param_count",
    "assert_runs",
    "assert_shapes",
]

#: Batch sizes checked when hypothesis is not installed and none are given.
FALLBACK_BATCH_SIZES = (1, 2, 3, 5, 8)
#: Batch sizes hypothesis always tries before drawing: the edge case 1, an even and an odd size.
EXPLICIT_BATCH_SIZES = (1, 2, 3)
#: Drawn batch sizes when neither ``max_examples`` nor ``--shapecheck-examples`` says otherwise.
DEFAULT_EXAMPLES = 10

#: One spec, or a list with one spec per tensor.
Specs: TypeAlias = SpecLike | list[SpecLike]


# -- assert_runs ------------------------------------------------------------------------------
def assert_runs(model: nn.Module, *inputs: Any, **forward_kwargs: Any) -> Report:
    """Assert that the forward pass runs; on failure the message is the full explanation.

    Returns the Report, so further checks can read it.

    Example:
        >>> import torch
        >>> assert_runs(torch.nn.Linear(4, 2), torch.randn(3, 4)).output_shapes
        [(3, 2)]
    """
    __tracebackhide__ = True
    report = explain(model, *inputs, **forward_kwargs)
    _raise_if_failed(report)
    return report


def _raise_if_failed(report: Report, context: str = "") -> None:
    __tracebackhide__ = True
    failure = report.failure
    if failure is None:
        return
    where = f"layer '{failure.path}' ({failure.type})" if failure.path else "the model's forward"
    headline = f"{context}the forward pass raised {type(failure.exception).__name__} in {where}"
    rules = ", ".join(dict.fromkeys(d.rule for d in report.diagnoses))
    if rules:  # the rule ids are stable names to search for; the report shows only the text
        headline += f"\ndiagnosis: {rules}"
    # not chained: the report quotes PyTorch's message and the source line, and a chained
    # traceback would print shapecheck's tracer frames above the explanation
    raise AssertionError(f"{headline}\n\n{report}") from None


# -- assert_shapes / assert_output_shape --------------------------------------------------------
@dataclass(frozen=True)
class _Entry:
    """Recorded shapes of one layer (or the model's output) and the specs they must match."""

    label: str
    kind: str
    shapes: list[tuple[int, ...]]
    specs: list[Spec]
    order: int


def assert_shapes(
    model: nn.Module,
    *inputs: Any,
    expected: Mapping[str, Specs],
    input_spec: Specs | None = None,
) -> Report:
    """Assert the output shape of layers, by path as in ``Report.layers`` (``""`` is the model).

    Symbols bind once and must agree everywhere; ``input_spec`` binds them from the inputs.
    A list of specs covers a layer's (or the inputs') several tensors in order.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        >>> _ = assert_shapes(model, torch.randn(3, 4), input_spec="B 4",
        ...                   expected={"0": "B 8", "2": "B 2"})
    """
    __tracebackhide__ = True
    specs = {path: _spec_list(s, f"the spec for layer {path!r}") for path, s in expected.items()}
    inputs_spec = None if input_spec is None else _spec_list(input_spec, "input_spec")
    report = assert_runs(model, *inputs)
    bindings = _bind_inputs(report, inputs_spec)
    entries = sorted((_layer_entry(report, p, s) for p, s in specs.items()), key=lambda e: e.order)
    _check_entries(report, entries, bindings)
    return report


def assert_output_shape(
    model: nn.Module, *inputs: Any, spec: Specs, input_spec: Specs | None = None
) -> Report:
    """Assert the shape of the model's output (a list of specs for several output tensors).

    Example:
        >>> import torch
        >>> _ = assert_output_shape(torch.nn.Linear(4, 2), torch.randn(3, 4),
        ...                         input_spec="B 4", spec="B 2")
    """
    __tracebackhide__ = True
    specs = _spec_list(spec, "spec")
    inputs_spec = None if input_spec is None else _spec_list(input_spec, "input_spec")
    report = assert_runs(model, *inputs)
    bindings = _bind_inputs(report, inputs_spec)
    entry = _Entry("the output", "", report.output_shapes, specs, 0)
    _check_entries(report, [entry], bindings)
    return report


def _spec_list(specs: Specs, what: str) -> list[Spec]:
    """A list holds one spec per tensor; a string or tuple is one spec."""
    if isinstance(specs, list):
        return [parse_spec(s) for s in specs]
    if specs is None:
        raise UsageError(f"{what} is required: a shape spec such as 'B 3 32 32'.")
    return [parse_spec(specs)]


def _bind_inputs(report: Report, specs: list[Spec] | None) -> Bindings:
    """Bindings from the inputs; a spec that does not fit the user's own input is a UsageError."""
    bindings = Bindings()
    if specs is None:
        return bindings
    if len(specs) != len(report.input_shapes):
        raise UsageError(
            f"input_spec has {len(specs)} spec(s) for {len(report.input_shapes)} "
            "input tensor(s): give one spec per tensor, in a list."
        )
    for index, (spec, dims) in enumerate(zip(specs, report.input_shapes, strict=True)):
        mismatch = match(spec, dims, f"input {index}", bindings)
        if mismatch is not None:
            raise UsageError(
                f"input_spec {spec} does not describe input {index} "
                f"{shape(dims)}: {mismatch.reason}."
            )
    return bindings


def _layer_entry(report: Report, path: str, parsed: list[Spec]) -> _Entry:
    if path == "":
        return _Entry("the output", "", report.output_shapes, parsed, len(report.layers))
    found = next((x for x in report.layers if x.path == path and x.kind == "module"), None)
    if found is None:
        return _Entry(f"layer '{path}'", "", [], parsed, -1)
    return _Entry(f"layer '{path}'", found.type, found.output_shapes, parsed, found.index)


def _check_entries(report: Report, entries: list[_Entry], bindings: Bindings) -> None:
    __tracebackhide__ = True
    problems = [p for e in entries if (p := _entry_problem(report, e, bindings))]
    if problems:
        raise AssertionError(_contract_message(report, problems, bindings))


def _entry_problem(report: Report, entry: _Entry, bindings: Bindings) -> str | None:
    if entry.order < 0:
        known = ", ".join(repr(p) for p in dict.fromkeys(x.path for x in report.layers))
        return f"{entry.label} did not run in the forward pass\n  recorded  {known}"
    if len(entry.specs) != len(entry.shapes):
        return (
            f"{entry.label} gave {len(entry.shapes)} tensor(s) {shapes(entry.shapes)}, "
            f"the spec lists {len(entry.specs)}"
        )
    for index, (spec, dims) in enumerate(zip(entry.specs, entry.shapes, strict=True)):
        where = entry.label if len(entry.shapes) == 1 else _nth_output(entry.label, index)
        mismatch = match(spec, dims, where, bindings)
        if mismatch is not None:
            return _mismatch_lines(entry, mismatch)
    return None


def _nth_output(label: str, index: int) -> str:
    return f"output {index}" if label == "the output" else f"{label} output {index}"


def _mismatch_lines(entry: _Entry, mismatch: Mismatch) -> str:
    kind = f" ({entry.kind})" if entry.kind else ""
    return "\n".join(
        [
            f"{mismatch.where}{kind} does not match its spec",
            f"  got       {shape(mismatch.shape)}",
            f"  expected  {mismatch.spec}",
            f"  because   {mismatch.reason}",
        ]
    )


def _contract_message(report: Report, problems: list[str], bindings: Bindings) -> str:
    lines = ["shape contract broken", "", *"\n\n".join(problems).splitlines()]
    if bindings.values:
        wrapped = textwrap.wrap(bindings.describe(), 90, break_on_hyphens=False)
        lines += ["", "\n          ".join(["symbols   " + wrapped[0], *wrapped[1:]])]
    return "\n".join([*lines, "", str(report)])


# -- assert_param_count ---------------------------------------------------------------------------
def assert_param_count(
    model: nn.Module,
    total: int | None = None,
    trainable: int | None = None,
    per_layer: Mapping[str, int] | None = None,
) -> None:
    """Assert parameter counts: unique tensors (tied weights once); a layer counts its subtree.

    Example:
        >>> import torch
        >>> assert_param_count(torch.nn.Linear(4, 2), total=10, per_layer={"": 10})
    """
    __tracebackhide__ = True
    model = require_module(model)
    checks = _param_checks(model, total, trainable, per_layer or {})
    wrong = [line for line in checks if line is not None]
    if wrong:
        raise AssertionError(
            "\n".join(["parameter count does not match", *wrong, "", _param_table(model)])
        )


def _param_checks(
    model: nn.Module, total: int | None, trainable: int | None, per_layer: Mapping[str, int]
) -> list[str | None]:
    if total is None and trainable is None and not per_layer:
        raise UsageError("assert_param_count needs total=, trainable= or per_layer= to check.")
    totals = param_totals(model)
    checks = [
        _compare("total", totals.total, total),
        _compare("trainable", totals.trainable, trainable),
    ]
    for path, want in per_layer.items():
        checks.append(_compare(f"layer '{path}'", _subtree_params(model, path), want))
    return checks


def _subtree_params(model: nn.Module, path: str) -> int | None:
    try:
        return param_totals(model.get_submodule(path)).total
    except AttributeError:
        return None


def _compare(label: str, got: int | None, want: int | None) -> str | None:
    if want is None:
        return None
    if isinstance(want, bool) or not isinstance(want, int) or want < 0:
        raise UsageError(f"the expected count for {label} must be an int >= 0, got {want!r}.")
    if got is None:
        return f"  {label:<12} no such module in the model (see the table below)"
    if got == want:
        return None
    return f"  {label:<12} {count(got)}, expected {count(want)} ({got - want:+,})"


def _param_table(model: nn.Module) -> str:
    """Each module's own parameters; a tensor shared by several modules is listed once."""
    seen: set[int] = set()
    rows = []
    for path, module in model.named_modules():
        own = [p for p in module.parameters(recurse=False) if id(p) not in seen]
        seen.update(id(p) for p in own)
        if own:
            rows.append(
                f"  {path or '(root)':<30} {type(module).__name__:<16} "
                f"{count(sum(p.numel() for p in own)):>12}"
            )
    totals = param_totals(model)
    rows.append(f"params     {count(totals.total)} total · {count(totals.trainable)} trainable")
    return "\n".join(["parameters by module (own tensors, each counted once):", *rows])


# -- assert_batch_polymorphic -------------------------------------------------------------------
def assert_batch_polymorphic(
    model: nn.Module,
    input_spec: Specs,
    output_spec: Specs,
    batch_sizes: Sequence[int] | None = None,
    *,
    batch: str = "B",
    max_examples: int | None = None,
    dtype: torch.dtype | str | Sequence[torch.dtype | str] = torch.float32,
    independence: bool = True,
    **sizes: int,
) -> list[int]:
    """Assert the model maps ``input_spec`` to ``output_spec`` for any batch size.

    The model runs in eval mode (BatchNorm and Dropout mix or randomise samples in training by
    design) and its flags are restored afterwards. For each batch size the output must match
    ``output_spec`` with ``batch`` bound to that size; with ``independence``, sample i's output
    must not change when only the other samples change, which catches ``x.view(-1, N)`` and
    similar reshapes that mix the batch. Batch sizes are ``batch_sizes`` when given, else
    1, 2, 3 and ``max_examples`` sizes drawn by hypothesis (derandomised, so CI is stable; the
    default is 10 or pytest's ``--shapecheck-examples``), else, without hypothesis,
    ``FALLBACK_BATCH_SIZES``. Other symbols need a size: ``H=32``. Integer inputs hold 0 and 1.

    Returns:
        The batch sizes checked, in order.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Flatten(), nn.Linear(12, 2))
        >>> assert_batch_polymorphic(model, "B 3 H", "B 2", [1, 4], H=4)
        [1, 4]
    """
    __tracebackhide__ = True
    model = require_module(model)
    check = _BatchCheck(
        model,
        _spec_list(input_spec, "input_spec"),
        _spec_list(output_spec, "output_spec"),
        batch,
        dict(sizes),
        _dtypes(dtype),
        independence,
    )
    if batch_sizes is not None:
        for size in _valid_batch_sizes(batch_sizes):
            check(size)
    else:
        _draw_batch_sizes(check, _examples(max_examples))
    return list(dict.fromkeys(check.checked))


def _valid_batch_sizes(batch_sizes: Sequence[int]) -> list[int]:
    sizes = list(batch_sizes)
    if not sizes or any(isinstance(b, bool) or not isinstance(b, int) or b < 1 for b in sizes):
        raise UsageError(f"batch_sizes must be a non-empty list of ints >= 1, got {batch_sizes!r}.")
    return sizes


def _dtypes(dtype: object) -> list[torch.dtype]:
    if isinstance(dtype, (list, tuple)):
        return [parse_dtype(d) for d in dtype]
    return [parse_dtype(dtype)]


def _examples(max_examples: int | None) -> int:
    if max_examples is None:
        plugin = sys.modules.get("shapecheck.pytest_plugin")
        configured = getattr(plugin, "configured_examples", lambda: None)()
        max_examples = DEFAULT_EXAMPLES if configured is None else configured
    if isinstance(max_examples, bool) or not isinstance(max_examples, int) or max_examples < 0:
        raise UsageError(f"max_examples must be an int >= 0, got {max_examples!r}.")
    return max_examples


def _draw_batch_sizes(check: Callable[[int], None], max_examples: int) -> None:
    """Run ``check`` on 1, 2, 3 and drawn sizes; shrink a failure to the smallest size."""
    __tracebackhide__ = True
    try:
        import hypothesis
    except ImportError:  # hypothesis is optional: a fixed list still covers 1 and odd sizes
        for size in FALLBACK_BATCH_SIZES:
            check(size)
        return
    from .strategies import batch_sizes

    def batch_polymorphic(batch_size: int) -> None:
        __tracebackhide__ = True
        check(batch_size)

    run: Callable[..., None] = hypothesis.given(batch_sizes())(batch_polymorphic)
    for size in reversed(EXPLICIT_BATCH_SIZES):
        run = hypothesis.example(size)(run)
    settings = hypothesis.settings(
        max_examples=max(max_examples, 1),
        database=None,
        deadline=None,
        derandomize=True,
        print_blob=False,
        suppress_health_check=list(hypothesis.HealthCheck),
        phases=_phases(hypothesis, max_examples),
    )
    try:
        settings(run)()
    except AssertionError as error:  # keep hypothesis' notes, drop its frames from the traceback
        raise error.with_traceback(None) from None


def _phases(hypothesis: Any, max_examples: int) -> list[Any]:
    phase = hypothesis.Phase
    if max_examples == 0:  # only the explicit sizes 1, 2, 3
        return [phase.explicit]
    return [phase.explicit, phase.generate, phase.shrink]


@contextmanager
def _eval_mode(model: nn.Module) -> Iterator[None]:
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, training in flags:
            module.training = training


class _BatchCheck:
    """One batch size: build inputs, check shapes, then per-sample independence."""

    def __init__(
        self,
        model: nn.Module,
        inputs: list[Spec],
        outputs: list[Spec],
        batch: str,
        sizes: dict[str, int],
        dtypes: list[torch.dtype],
        independence: bool,
    ) -> None:
        if not any(batch in s.symbols for s in inputs):
            raise UsageError(
                f"the batch symbol {batch} is not in input_spec "
                f"{' '.join(str(s) for s in inputs)}; name it there or pass "
                "batch='N' for another symbol."
            )
        if len(dtypes) not in (1, len(inputs)):
            raise UsageError(f"dtype must be one dtype or one per input ({len(inputs)}).")
        self.model, self.inputs, self.outputs, self.batch = model, inputs, outputs, batch
        self.sizes, self.independence = sizes, independence
        self.dtypes = dtypes * len(inputs) if len(dtypes) == 1 else dtypes
        self.checked: list[int] = []
        self._make(1)  # a spec that cannot make a tensor is a UsageError before any drawing

    def __call__(self, size: int) -> None:
        __tracebackhide__ = True
        self.checked.append(size)
        args = self._make(size)
        with _eval_mode(self.model):
            report = explain(self.model, *args)
            _raise_if_failed(report, f"at batch size {size}: ")
            bindings = self._bind(size)
            entry = _Entry("the output", "", report.output_shapes, self.outputs, 0)
            problem = _entry_problem(report, entry, bindings)
            if problem:
                message = _contract_message(report, [problem], bindings)
                raise AssertionError(f"at batch size {size}: {message}")
            if self.independence and size > 1:
                check_independence(self.model, args, (self.inputs, self.outputs), self.batch,
                                   report, size)  # fmt: skip

    def _make(self, size: int) -> tuple[torch.Tensor, ...]:
        generator = torch.Generator().manual_seed(size)  # never touches the global RNG
        values = {**self.sizes, self.batch: size}
        made = []
        for index, (spec, dtype) in enumerate(zip(self.inputs, self.dtypes, strict=True)):
            made.append(random_like(spec.build(values, f"input_spec {index}"), dtype, generator))
        return tuple(made)

    def _bind(self, size: int) -> Bindings:
        bindings = Bindings()
        values = {**self.sizes, self.batch: size}
        for index, spec in enumerate(self.inputs):
            match(spec, spec.build(values), f"input {index}", bindings)
        return bindings


# -- assert_contract ------------------------------------------------------------------------------
def assert_contract(
    model: nn.Module,
    input_spec: Specs,
    output_spec: Specs,
    example: Any = None,
    *,
    batch: str | None = None,
    **sizes: int,
) -> Contract:
    """Assert the output's shape formula matches ``output_spec`` at every size the model accepts
    and that the batch is kept, from one symbolic trace (:func:`shapecheck.contract`).

    ``example`` (a tensor, a shape, or symbol sizes as keywords) gives the sizes to trace at.
    On failure the message is the contract: every layer's output as a formula.

    Returns:
        The Contract, for further checks.

    Example:
        >>> from shapecheck.demo import seed_model_fixed  # needs torch >= 2.13, so not run here
        >>> model = seed_model_fixed()
        >>> c = assert_contract(model, "B 3 H W", "B 2", B=4, H=32, W=32)  # doctest: +SKIP
        >>> c.output  # doctest: +SKIP
        ('B', 2)
    """
    __tracebackhide__ = True
    from ._contract import make

    found = make(model, input_spec, example, batch=batch, sizes=sizes)
    specs = _spec_list(output_spec, "output_spec")
    problems = _formula_problems(specs, found.outputs, set(found.symbols))
    keeps = found.keeps_batch
    if not keeps:
        problems.append(f"the batch is not kept: {keeps.why}")
    if problems:
        lines = ["input-size contract broken", "", *(f"  {p}" for p in problems)]
        raise AssertionError("\n".join([*lines, "", str(found)]))
    return found


def _formula_problems(
    specs: list[Spec], outputs: Sequence[Sequence[str | int]], inputs: set[str]
) -> list[str]:
    """What differs between each output's formulas and its spec (a new symbol binds once)."""
    if len(specs) != len(outputs):
        return [f"the model gives {len(outputs)} output(s), the spec lists {len(specs)}"]
    problems: list[str] = []
    bound: dict[str, str | int] = {}
    for index, (spec, dims) in enumerate(zip(specs, outputs, strict=True)):
        where = "the output" if len(outputs) == 1 else f"output {index}"
        problem = _formula_problem(spec, tuple(dims), inputs, bound)
        if problem:
            problems.append(f"{where} is {_formula(dims)}, the spec says {spec}: {problem}")
    return problems


def _formula_problem(
    spec: Spec, dims: tuple[str | int, ...], inputs: set[str], bound: dict[str, str | int]
) -> str | None:
    rest = spec.rest
    entries = spec.dims
    if rest is not None:
        after = len(entries) - rest - 1
        if len(dims) < len(entries) - 1:
            return f"{len(dims)} dims, at least {len(entries) - 1} needed"
        head = zip(entries[:rest], dims[:rest], strict=True)
        tail = zip(entries[rest + 1 :], dims[len(dims) - after :], strict=True)
        pairs = [*head, *tail]
    elif len(dims) != len(entries):
        return f"{len(dims)} dims, {len(entries)} expected"
    else:
        pairs = list(zip(entries, dims, strict=True))
    for index, (entry, dim) in enumerate(pairs):
        wrong = _entry_problem_formula(entry, dim, inputs, bound)
        if wrong:
            return f"dim {index} {wrong}"
    return None


def _entry_problem_formula(
    entry: Any, dim: str | int, inputs: set[str], bound: dict[str, str | int]
) -> str | None:
    if entry.kind == "size" and dim != entry.size:
        return f"is {dim}, not {entry.size}"
    if entry.kind == "symbol" and entry.name in inputs and dim != entry.name:
        return f"is {dim}, not {entry.name} for every size"
    new = entry.kind == "symbol" and entry.name not in inputs
    if new and bound.setdefault(entry.name, dim) != dim:
        return f"is {dim}, but {entry.name} is {bound[entry.name]} elsewhere"
    return None


def _formula(dims: Sequence[str | int]) -> str:
    return "(" + ", ".join(str(d) for d in dims) + ("," if len(dims) == 1 else "") + ")"
