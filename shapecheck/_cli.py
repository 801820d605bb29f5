"""The command line: ``shapecheck explain FILE.py:NAME --input 1,3,32,32``,
``shapecheck contract FILE.py:NAME --input 4,3,32,32 --spec "B 3 H W"`` and ``shapecheck demo``.

Exit status: 0 when the model runs, 1 when its forward fails, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

from torch import nn

from ._errors import UsageError

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shapecheck", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    explain = commands.add_parser("explain", help="trace a model and explain its shapes")
    explain.add_argument("target", help="FILE.py:NAME — a module instance, class or factory")
    explain.add_argument("--input", action="append", default=[], metavar="1,3,32,32",
                         help="an input shape (repeat for several inputs)")  # fmt: skip
    explain.add_argument("--dtype", action="append", default=[], help="dtype per --input")
    explain.add_argument("--device", default=None, help="cpu, cuda, meta …")
    explain.add_argument("--depth", type=int, default=None, help="fold rows deeper than N")
    explain.add_argument("--json", action="store_true", help="print the report as JSON")
    explain.add_argument("--dry-run", action="store_true", help="run on fake tensors")
    contract = commands.add_parser("contract", help="every layer's shape as a formula of the "
                                   "input's symbols, and the sizes the model accepts")  # fmt: skip
    contract.add_argument("target", help="FILE.py:NAME — a module instance, class or factory")
    contract.add_argument("--input", action="append", default=[], metavar="4,3,32,32",
                          help="the example's shape (repeat for several inputs)")  # fmt: skip
    contract.add_argument("--spec", action="append", default=[], metavar="'B 3 H W'",
                          help="a spec per --input: symbols vary, integers are fixed")  # fmt: skip
    contract.add_argument("--dtype", action="append", default=[], help="dtype per --input")
    contract.add_argument("--json", action="store_true", help="print the contract as JSON")
    commands.add_parser("demo", help="explain the seed's broken CIFAR-2 CNN, then the fixed one")
    return parser


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        dims = ()
    if not dims:
        raise UsageError(f"--input {text!r} is not a shape; write it like 1,3,32,32.")
    return dims


def _load(target: str) -> tuple[nn.Module, tuple[Any, ...]]:
    """Import FILE.py and turn NAME into a module (and example inputs, if a factory gave some)."""
    path_text, _, name = target.rpartition(":")
    path = Path(path_text)
    if not name or not path_text or path.suffix != ".py" or not path.is_file():
        raise UsageError(f"{target!r}: expected FILE.py:NAME with an existing FILE.py.")
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}.")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.pop(0)
    if not hasattr(module, name):
        raise UsageError(f"{path} defines no {name!r}.")
    return _instantiate(getattr(module, name), name)


def _instantiate(obj: object, name: str) -> tuple[nn.Module, tuple[Any, ...]]:
    if isinstance(obj, nn.Module):
        return obj, ()
    if callable(obj):
        made = obj()
        if isinstance(made, nn.Module):
            return made, ()
        if isinstance(made, tuple) and made and isinstance(made[0], nn.Module):
            args = made[1] if len(made) > 1 and isinstance(made[1], tuple) else ()
            return made[0], args
    raise UsageError(
        f"{name!r} is not an nn.Module, a module class or a zero-argument factory returning one."
    )


def _explain(ns: argparse.Namespace) -> int:
    from ._explain import explain

    model, args = _load(ns.target)
    sizes = [_shape(text) for text in ns.input]
    if not sizes and not args:
        raise UsageError("give the input shape, e.g. --input 1,3,32,32.")
    dtypes = (ns.dtype[0] if len(ns.dtype) == 1 else ns.dtype) if ns.dtype else None
    report = explain(
        model, *([] if sizes else args), input_size=sizes or None, dtypes=dtypes,
        device=ns.device, depth=ns.depth, dry_run=ns.dry_run,
    )  # fmt: skip
    print(json.dumps(report.to_dict(), indent=2) if ns.json else report)
    return 0 if report.ok else 1


def _contract(ns: argparse.Namespace) -> int:
    from ._contract import contract

    model, args = _load(ns.target)
    shapes = [_shape(text) for text in ns.input]
    if not ns.spec:
        raise UsageError("give the spec, e.g. --spec 'B 3 H W' (symbols vary, integers are fixed).")
    if shapes and len(shapes) != len(ns.spec):
        raise UsageError(
            f"give one --spec per --input ({len(shapes)} inputs, {len(ns.spec)} specs)."
        )
    example: Any = (shapes[0] if len(shapes) == 1 else shapes) if shapes else list(args)
    if not shapes and not args:
        raise UsageError("give the example's shape, e.g. --input 4,3,32,32.")
    dtype = (ns.dtype[0] if len(ns.dtype) == 1 else ns.dtype) if ns.dtype else None
    spec = ns.spec[0] if len(ns.spec) == 1 else list(ns.spec)
    found = contract(model, spec, example[0] if isinstance(example, list) and len(example) == 1
                     else example, dtype=dtype)  # fmt: skip
    print(json.dumps(found.to_dict(), indent=2) if ns.json else found)
    return 0


def _demo() -> int:
    import torch

    from ._explain import explain
    from .demo import seed_model

    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    model = seed_model()
    try:
        model(image)
    except RuntimeError as error:  # the seed's bug: what PyTorch alone says
        print(f"PyTorch, on the learner's CNN called as model(img.unsqueeze(0)):\n\n"
              f"    RuntimeError: {error}\n")  # fmt: skip
    print("report = shapecheck.explain(model, img.unsqueeze(0)):\n")
    report = explain(model, image)
    print(report)
    print("\n\nfixed = report.diagnoses[0].apply(model)   # a copy with the verified fix:\n")
    print(explain(report.diagnoses[0].apply(model), image))
    return 0


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    ns = _parser().parse_args(argv)
    try:
        if ns.command == "contract":
            return _contract(ns)
        return _demo() if ns.command == "demo" else _explain(ns)
    except UsageError as error:
        print(f"shapecheck: error: {error}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `shapecheck demo | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
