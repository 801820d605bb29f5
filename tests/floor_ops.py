"""Print every aten/prim op overload of the running torch, one ``ns::op.overload`` per line.

``tests/data/floor-ops.txt`` is this script's output under the floor torch (make it again when
the floor moves: ``.venv-torch-2.4.1/bin/python tests/floor_ops.py > tests/data/floor-ops.txt``
after ``python3 tasks.py compat 2.4.1 --co``). ``test_compat.py`` hides every other op.
"""

from __future__ import annotations

import torch


def op_names() -> list[str]:
    """``aten::add.Tensor``-style names, sorted; ``.default`` for an op's default overload."""
    names = {f"{s.name}.{s.overload_name or 'default'}" for s in torch._C._jit_get_all_schemas()}
    for name in torch._C._dispatch_get_all_op_names():
        op, _, overload = name.partition(".")
        names.add(f"{op}.{overload or 'default'}")
    return sorted(n for n in names if n.startswith(("aten::", "prim::")))


if __name__ == "__main__":
    print(f"# torch {torch.__version__}: every aten/prim op overload (tests/floor_ops.py)")
    print("\n".join(op_names()))
