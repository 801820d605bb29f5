"""Fix code in the user's own words: the variable their line of ``forward`` passes to a layer.

The rules write fix code for a tensor called ``x`` (``x = torch.flatten(x, 1)``); the book's
``Net`` calls it ``out``. Pure text and ``ast``: no torch.
"""

from __future__ import annotations

import ast
import re

__all__ = ["for_variable", "passed_to"]

_X = re.compile(r"(?<![\w.'\"])x(?![\w'\"])")


def passed_to(line: str, callee: str) -> str | None:
    """The variable ``line`` passes first to ``self.<callee>(...)``, when it is a plain name.

    >>> passed_to("out = torch.tanh(self.fc1(out))", "fc1")
    'out'
    >>> passed_to("return self.fc(h.view(-1, 8))", "fc") is None
    True
    """
    try:
        tree = ast.parse(line.strip())
    except SyntaxError:  # one line of a statement written over several
        return _by_pattern(line, callee)
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == callee
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "self"
            and node.args
        ):
            first = node.args[0]
            return first.id if isinstance(first, ast.Name) else None
    return None


def _by_pattern(line: str, callee: str) -> str | None:
    found = re.search(rf"\bself\.{re.escape(callee)}\(\s*([A-Za-z_]\w*)\s*[,)]", line)
    return found.group(1) if found else None


def for_variable(code: str, line: str, callee: str) -> str:
    """``code`` written for ``x``, with ``x`` renamed to what ``line`` passes to the callee.

    >>> for_variable("x = torch.flatten(x, 1)", "out = torch.tanh(self.fc1(out))", "fc1")
    'out = torch.flatten(out, 1)'
    >>> for_variable("x = x.permute(0, 3, 1, 2)", "y = self.conv(img)", "conv")
    'img = img.permute(0, 3, 1, 2)'
    """
    name = passed_to(line, callee) if line and callee else None
    if name is None or name == "x":
        return code
    return _X.sub(name, code)
