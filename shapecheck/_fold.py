"""Which rows of the layer table to show: repeated blocks folded into one ``×N`` row, blocks
deeper than ``depth`` or of a class already shown folded into their caller. Pure data: rows
in, rows out; ``_render`` lays them out.

A run of consecutive sibling calls of the same type, hyper-parameters and shapes (with the same
parameters and the same number of calls inside) becomes one row, ``layer1.1..2  Bottleneck ×2``.
The first call of a class with calls inside is shown open; later calls of that class show as
one row each (``[+13 rows]``). Containers (``Sequential``, ``ModuleList``, ``ModuleDict``) hold
different things each time, so they always stay open. The failing row and its callers are
never folded away.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

from ._records import Layer

__all__ = ["Row", "visible_rows"]

_CONTAINERS = frozenset({"Sequential", "ModuleList", "ModuleDict"})


@dataclass(frozen=True)
class Row:
    """One line of the table: a call, or a run of ``repeat`` equal calls starting with it.

    ``label`` is the path as shown (``layer1.1..2`` for a run); ``hidden`` counts the calls
    folded into this row and ``params`` includes theirs. A folded row stands for the calls
    ``layer.index`` to ``end`` (call order keeps a call and what it ran together).
    """

    layer: Layer
    label: str
    params: int
    repeat: int = 1
    hidden: int = 0
    depth: int = 0
    end: int = -1


class _Tree(NamedTuple):
    layers: list[Layer]
    children: dict[int | None, list[int]]
    size: list[int]  # calls under each row
    params: list[int]  # parameters of each row and the calls under it


def _tree(layers: list[Layer]) -> _Tree:
    children: dict[int | None, list[int]] = {}
    for layer in layers:
        children.setdefault(layer.parent, []).append(layer.index)
    size, params = [0] * len(layers), [x.params for x in layers]
    for layer in reversed(layers):  # a child is recorded after its parent
        if layer.parent is not None:
            size[layer.parent] += size[layer.index] + 1
            params[layer.parent] += params[layer.index]
    return _Tree(layers, children, size, params)


def keep_of(layers: list[Layer]) -> set[int]:
    """The failing rows and every call they ran in: never folded away."""
    keep: set[int] = set()
    for layer in layers:
        if layer.failed:
            index: int | None = layer.index
            while index is not None and index not in keep:
                keep.add(index)
                index = layers[index].parent
    return keep


def visible_rows(layers: list[Layer], *, depth: int | None, fold: bool) -> list[Row]:
    """The rows to print, in call order. Without ``fold`` and ``depth``: one row per call."""
    tree = _tree(layers)
    walk = _Walk(tree, depth, fold, keep_of(layers))
    for root in tree.children.get(None, []):
        walk.call(root)
    return walk.rows


def _signature(tree: _Tree, index: int) -> tuple[object, ...] | None:
    layer = tree.layers[index]
    if layer.kind != "module" or layer.failed:
        return None
    shapes = (tuple(layer.input_shapes), tuple(layer.output_shapes))
    return layer.type, layer.summary, shapes, tree.params[index], tree.size[index]


def _runs(tree: _Tree, kids: list[int], fold: bool, keep: set[int]) -> list[list[int]]:
    """Consecutive equal siblings grouped (each group one row); singletons otherwise."""
    groups: list[list[int]] = []
    for kid in kids:
        sig = _signature(tree, kid) if fold and kid not in keep else None
        last = groups[-1] if groups else None
        if sig is not None and last is not None and last[0] not in keep \
                and _signature(tree, last[0]) == sig:  # fmt: skip
            last.append(kid)
        else:
            groups.append([kid])
    return groups


def span(paths: list[str]) -> str:
    """``layer1.1..2`` for ``layer1.1``, ``layer1.2``; ``a..b`` when the names are not numbers.

    >>> span(["blocks.0", "blocks.11"]), span(["1", "3"]), span(["enc", "dec"])
    ('blocks.0..11', '1..3', 'enc..dec')
    """
    first, last = paths[0], paths[-1]
    head, _, a = first.rpartition(".")
    tail_head, _, b = last.rpartition(".")
    if head == tail_head and a.isdigit() and b.isdigit():
        return f"{head}.{a}..{b}" if head else f"{a}..{b}"
    return f"{first}..{last}"


class _Walk:
    """Emit rows depth first, deciding per call whether what it ran is shown or folded."""

    def __init__(self, tree: _Tree, depth: int | None, fold: bool, keep: set[int]) -> None:
        self.tree, self.depth, self.fold, self.keep = tree, depth, fold, keep
        self.opened: set[object] = set()  # classes already shown open
        self.rows: list[Row] = []

    def _key(self, index: int) -> object:
        """What "the same class" means: the type; for a container, also what it holds."""
        layer = self.tree.layers[index]
        if layer.type not in _CONTAINERS:
            return layer.type
        kids = [self.tree.layers[k] for k in self.tree.children.get(index, [])]
        return layer.type, tuple((k.type, k.summary, tuple(k.input_shapes),
                                  tuple(k.output_shapes)) for k in kids)  # fmt: skip

    def _folds_inside(self, index: int) -> bool:
        layer = self.tree.layers[index]
        if not self.tree.children.get(index) or index in self.keep:
            return False
        if self.depth is not None and layer.depth >= self.depth:
            return True
        return self.fold and self._key(index) in self.opened

    def _opens(self, index: int) -> bool:
        return bool(self.tree.children.get(index)) and not self._folds_inside(index)

    def call(self, index: int) -> None:
        self._group([index])

    def _group(self, group: list[int]) -> None:
        """One row for ``group``: a run is shown closed, a call whose class is shown open once
        already too. The first call of a run whose class is not open yet is split off and
        shown open, so the table shows the inside of each class once."""
        if len(group) > 1 and self._opens(group[0]):
            self._group(group[:1])
            self._group(group[1:])
            return
        tree, first = self.tree, group[0]
        layer = tree.layers[first]
        closed = len(group) > 1 or self._folds_inside(first)
        kids = [] if closed else tree.children.get(first, [])
        if kids and self.depth is not None and layer.depth >= self.depth:
            kids = [k for k in kids if k in self.keep]  # open only on the way to the failure
        if closed:
            hidden = sum(tree.size[i] for i in group) + len(group) - 1
            params = sum(tree.params[i] for i in group)
        else:
            folded = [k for k in tree.children.get(first, []) if k not in kids]
            hidden = sum(tree.size[k] + 1 for k in folded)
            params = layer.params + sum(tree.params[k] for k in folded)
        label = span([tree.layers[i].path for i in group]) if len(group) > 1 else layer.path
        end = group[-1] + tree.size[group[-1]] if closed else first
        self.rows.append(Row(layer, label, params, len(group), hidden, layer.depth, end))
        if not closed and tree.children.get(first):
            self.opened.add(self._key(first))
        for run in _runs(tree, kids, self.fold, self.keep):
            self._group(run)
