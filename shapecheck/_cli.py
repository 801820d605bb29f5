"""The command line: ``shapecheck explain FILE.py:NAME --input 1,3,32,32``,
``shapecheck contract FILE.py:NAME --input 4,3,32,32 --spec "B 3 H W"`` and ``shapecheck demo``.

Exit status: 0 when the model runs, 1 when its forward fails, 2 on usage errors (and on errors
while loading the file or building the model), 3 when shapecheck itself failed.
"""

from __future__ import annotations

import argparse
import importlib.util
import inspect
import json
import os
import re
import sys
import traceback
from pathlib import Path
from types import ModuleType
from typing import Any

from . import __version__
from ._errors import UsageError

__all__ = ["main"]

_DESCRIPTION = """\
Explain a PyTorch model's shapes: every layer's input and output, the layer that fails, why,
and a fix verified by re-running the model with it."""

_EPILOG = """\
examples:
  shapecheck demo
  shapecheck explain model.py:Net --input 1,3,32,32
  shapecheck explain model.py:build --input '(8, 3, 224, 224)' --dry-run
  shapecheck explain model.py:model --input 2,16 --input 2,16 --dtype int64 --json
  shapecheck explain model.py:Net --input 1,3,32,32 --width 80 --depth 1
  shapecheck contract model.py:Net --input 4,3,32,32 --spec 'B 3 H W'

NAME is a module instance, an nn.Module class that takes no arguments, or a function of no
arguments returning a module (or a (module, example_inputs) pair, then --input may be left out).

exit status:
  0  the model runs
  1  the model's forward fails (the report says where, why, and how to fix it)
  2  a usage error: bad arguments, or FILE.py cannot be loaded or NAME built
  3  shapecheck itself failed (please report it)
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="shapecheck", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    explain = commands.add_parser(
        "explain", help="trace a model and explain its shapes", description=_DESCRIPTION,
        epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter,
    )  # fmt: skip
    explain.add_argument("target", metavar="FILE.py:NAME",
                         help="a module instance, a class or a factory in FILE.py")  # fmt: skip
    explain.add_argument("--input", action="append", default=[], metavar="SHAPE",
                         help="an input shape: 1,3,32,32 or '(1, 3, 32, 32)' (repeat for "
                              "several inputs)")  # fmt: skip
    explain.add_argument(
        "--dtype",
        action="append",
        default=[],
        help="dtype of the inputs (float32 by default), or one per --input",
    )
    explain.add_argument("--device", default=None, help="cpu, cuda, cuda:1, mps, meta")
    explain.add_argument(
        "--dry-run",
        action="store_true",
        help="run on fake tensors: no memory for inputs and activations",
    )
    explain.add_argument(
        "--depth",
        type=int,
        default=None,
        metavar="N",
        help="fold rows deeper than N into their caller",
    )
    explain.add_argument(
        "--no-fold",
        action="store_true",
        help="a row for every call (repeated blocks are folded by default)",
    )
    explain.add_argument(
        "--width",
        type=int,
        default=None,
        metavar="COLUMNS",
        help="text width (default: the terminal's, or 100 for files and pipes)",
    )
    explain.add_argument("--json", action="store_true", help="print the report as JSON")
    contract = commands.add_parser("contract", help="every layer's shape as a formula of the "
                                   "input's symbols, and the sizes the model accepts")  # fmt: skip
    contract.add_argument("target", metavar="FILE.py:NAME",
                          help="a module instance, a class or a factory in FILE.py")  # fmt: skip
    contract.add_argument("--input", action="append", default=[], metavar="SHAPE",
                          help="the example's shape (repeat for several inputs)")  # fmt: skip
    contract.add_argument("--spec", action="append", default=[], metavar="'B 3 H W'",
                          help="a spec per --input: symbols vary, integers are fixed")  # fmt: skip
    contract.add_argument("--dtype", action="append", default=[], help="dtype per --input")
    contract.add_argument("--json", action="store_true", help="print the contract as JSON")
    commands.add_parser("demo", help="explain the seed's broken CIFAR-2 CNN, then the fixed one")
    return parser


_DIMS = re.compile(r"\s*[\(\[]?\s*(\d+(?:\s*[,x×]\s*\d+)*)\s*,?\s*[\)\]]?\s*")


def _shape(text: str) -> tuple[int, ...]:
    """``1,3,32,32``, ``(1, 3, 32, 32)``, ``[1, 3, 32, 32]``, ``1x3x32x32``."""
    found = _DIMS.fullmatch(text)
    if found is None:
        raise UsageError(f"--input {text!r} is not a shape; write it like 1,3,32,32 or "
                         "'(1, 3, 32, 32)'.")  # fmt: skip
    return tuple(int(d) for d in re.split(r"\s*[,x×]\s*", found.group(1)))


def _where(error: BaseException, path: Path) -> str:
    """``model.py:7`` of the innermost frame in the user's file (or the innermost at all)."""
    if isinstance(error, SyntaxError) and error.lineno:
        return f"{error.filename or path}:{error.lineno}"
    frames = traceback.extract_tb(error.__traceback__)
    mine = [f for f in frames if Path(f.filename).resolve() == path.resolve()]
    if not (mine or frames):
        return str(path)
    frame = (mine or frames)[-1]
    return f"{frame.filename}:{frame.lineno}"


def _failed(what: str, error: BaseException, path: Path) -> UsageError:
    if isinstance(error, SyntaxError):
        return UsageError(f"{_where(error, path)}: {what}: syntax error: {error.msg}")
    message = str(error).strip().splitlines()
    said = f": {message[0]}" if message else ""
    return UsageError(f"{_where(error, path)}: {what} raised {type(error).__name__}{said}")


_LOADED: set[str] = set()  # the names this command put in sys.modules


def _import(path: Path) -> ModuleType:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise UsageError(f"cannot import {path}.")
    module = importlib.util.module_from_spec(spec)
    if spec.name not in sys.modules or spec.name in _LOADED:  # never shadow a real module
        sys.modules[spec.name] = module  # classes find their source (and pickle) by it
        _LOADED.add(spec.name)
    sys.path.insert(0, str(path.parent.resolve()))
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:  # the user's file: say where, no traceback
        raise _failed(f"importing {path.name}", error, path) from None
    finally:
        sys.path.pop(0)
    return module


def _load(target: str) -> tuple[Any, tuple[Any, ...]]:
    """Import FILE.py and turn NAME into a module (and example inputs, if a factory gave some)."""
    path_text, _, name = target.rpartition(":")
    path = Path(path_text)
    if not name or not path_text or path.suffix != ".py" or not path.is_file():
        raise UsageError(f"{target!r}: expected FILE.py:NAME with an existing FILE.py.")
    module = _import(path)
    if not hasattr(module, name):
        raise UsageError(f"{path} defines no {name!r}.")
    return _instantiate(getattr(module, name), name, path)


def _instantiate(obj: object, name: str, path: Path) -> tuple[Any, tuple[Any, ...]]:
    from torch import nn

    if isinstance(obj, nn.Module):
        return obj, ()
    if callable(obj):
        _check_no_arguments(obj, name, path)
        try:
            made = obj()
        except (Exception, SystemExit) as error:
            raise _failed(f"{name}()", error, path) from None
        if isinstance(made, nn.Module):
            return made, ()
        if isinstance(made, tuple) and made and isinstance(made[0], nn.Module):
            args = made[1] if len(made) > 1 and isinstance(made[1], tuple) else ()
            return made[0], args
    raise UsageError(
        f"{name!r} is not an nn.Module, a module class or a zero-argument factory returning one."
    )


def _check_no_arguments(obj: Any, name: str, path: Path) -> None:
    """A class or factory that needs arguments: say which, and what to write instead."""
    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return
    needed = [n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty
              and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]  # fmt: skip
    if not needed:
        return
    try:
        line = f":{inspect.getsourcelines(obj)[1]}"
    except (OSError, TypeError):
        line = ""
    what = "class" if isinstance(obj, type) else "function"
    raise UsageError(
        f"{path}{line}: {what} {name} needs arguments ({', '.join(needed)}); add a function "
        f"that takes none to {path.name}, e.g. def build(): return {name}(...), and pass "
        f"{path.name}:build."
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
        device=ns.device, depth=ns.depth, dry_run=ns.dry_run, fold=not ns.no_fold,
    )  # fmt: skip
    print(json.dumps(report.to_dict(), indent=2) if ns.json else report.render(ns.width))
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


def _for_the_command_line(message: str) -> str:
    """explain's advice in this command's words: ``--dry-run`` for ``dry_run=True``."""
    message = message.replace("dry_run=True (--dry-run on the command line)", "--dry-run")
    return message.replace("pass dry_run=True", "pass --dry-run")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    ns = _parser().parse_args(argv)
    try:
        if ns.command == "explain" and ns.width is not None and ns.width < 40:
            raise UsageError(f"--width {ns.width}: at least 40 columns.")
        if ns.command == "contract":
            return _contract(ns)
        return _demo() if ns.command == "demo" else _explain(ns)
    except UsageError as error:
        print(f"shapecheck: error: {_for_the_command_line(str(error))}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `shapecheck demo | head`: the reader left; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception:  # shapecheck's own bug: not exit 1, which means "the model fails"
        traceback.print_exc()
        print("shapecheck: internal error (above); please report it", file=sys.stderr)
        return 3
