"""torchinfo as an oracle on a zoo of models; where torchinfo is wrong, the test says why."""

from __future__ import annotations

import copy
from typing import Any

import pytest
import torch
from torch import nn
from torch.nn.parameter import UninitializedTensorMixin
from zoo import ZOO, Entry, capture, tensor_shapes, unique_params

import shapecheck

torchinfo = pytest.importorskip("torchinfo")


def _torchinfo(model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    return torchinfo.summary(model, input_data=list(args), verbose=0, **kwargs)


def _unique_trainable(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _shared(model: nn.Module) -> bool:
    """True when a module instance sits at several paths (then named paths are ambiguous)."""
    return len(list(model.named_modules(remove_duplicate=False))) != len(list(model.modules()))


def test_zoo_is_big_enough():
    assert len(ZOO) >= 15
    assert len({e.name for e in ZOO}) == len(ZOO)


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_totals_agree_with_torchinfo(entry: Entry):
    model, args, kwargs = entry.build()
    report = shapecheck.explain(model, *args, **kwargs)
    assert report.ok, report
    oracle_model, oracle_args, oracle_kwargs = entry.build()
    stats = _torchinfo(oracle_model, oracle_args, oracle_kwargs)
    truth = unique_params(oracle_model)  # after torchinfo's forward: lazy weights exist
    assert report.total_params == truth
    assert report.trainable_params == _unique_trainable(oracle_model)
    if entry.torchinfo_total is None:
        assert stats.total_params == truth
        assert stats.trainable_params == report.trainable_params
    else:  # torchinfo is wrong here: it gives exactly the number the entry explains
        assert stats.total_params == entry.torchinfo_total(oracle_model) != truth, entry.why


def test_torchinfo_double_counts_tied_weights():
    entry = next(e for e in ZOO if e.name == "tied-weights")
    model, args, _ = entry.build()
    assert model.decoder.weight is model.embed.weight
    report = shapecheck.explain(model, *args)
    stats = _torchinfo(*entry.build()[:2], {})
    shared = model.embed.weight.numel()
    assert report.total_params == sum(p.numel() for p in model.parameters())
    assert stats.total_params == report.total_params + shared  # 912 + 640
    # each row still shows what its module holds, the shared tensor in both
    assert report.layer("embed").params == report.layer("decoder").params == shared


def test_torchinfo_materialises_lazy_modules_explain_does_not():
    entry = next(e for e in ZOO if e.name == "lazy")
    model, args, _ = entry.build()
    report = shapecheck.explain(model, *args)
    assert model[2].has_uninitialized_params()  # untouched
    oracle, oracle_args, _ = entry.build()
    stats = _torchinfo(oracle, oracle_args, {})
    assert not isinstance(oracle[2], nn.LazyLinear)  # torchinfo's forward changed the user's model
    assert (
        report.total_params
        == stats.total_params
        == unique_params(oracle)
        == (4 * 27 + 4) + (64 * 3 + 3)
    )


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_every_call_has_the_real_shapes(entry: Entry, dry_run: bool):
    model, args, kwargs = entry.build()
    reference = copy.deepcopy(model)
    report = shapecheck.explain(model, *args, dry_run=dry_run, **kwargs)
    seen = capture(reference, *args, **kwargs)
    assert report.ok, report
    assert seen.error is None
    assert report.output_shapes == tensor_shapes(seen.output)
    rows = [(x.path, x.output_shapes) for x in report.layers if x.kind == "module"]
    if _shared(model):  # my hooks know one name per instance; compare the shapes in order
        assert [s for _, s in rows] == [s for _, s in seen.calls]
    else:
        assert rows == seen.calls


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_torchinfo_layer_shapes_agree(entry: Entry):
    """torchinfo's per-layer output sizes (the calls it records) are among explain's rows."""
    model, args, kwargs = entry.build()
    report = shapecheck.explain(model, *args, **kwargs)
    stats = _torchinfo(*entry.build())
    ours = {tuple(s) for x in report.layers for s in x.output_shapes}
    for info in stats.summary_list:
        size = info.output_size
        if size and all(isinstance(d, int) for d in size):
            assert tuple(size) in ours, (info.class_name, size)


def test_frozen_layers_are_counted_as_frozen():
    entry = next(e for e in ZOO if e.name == "frozen")
    model, args, _ = entry.build()
    report = shapecheck.explain(model, *args)
    frozen = sum(p.numel() for p in model[0].parameters())
    assert report.non_trainable_params == frozen == 6 * 3 * 9 + 6
    assert report.layer("0").trainable == 0
    assert report.layer("0").params == frozen
    assert report.layer("3").trainable == report.layer("3").params


def test_explain_leaves_every_zoo_model_as_it_was():
    for entry in ZOO:
        model, args, kwargs = entry.build()
        before = _snapshot(model)
        shapecheck.explain(model, *args, **kwargs)
        shapecheck.explain(model, *args, dry_run=True, **kwargs)
        assert _snapshot(model) == before, entry.name


def _snapshot(model: nn.Module) -> list[tuple[Any, ...]]:
    """Classes, training flags and every state tensor's values (lazy ones by their class)."""
    state = [
        (name, type(t).__name__, None if isinstance(t, UninitializedTensorMixin) else t.tolist())
        for name, t in model.state_dict(keep_vars=True).items()
    ]
    return [*state, *((type(m).__name__, m.training) for m in model.modules())]


@pytest.mark.parametrize("entry", ZOO, ids=lambda e: e.name)
def test_unused_module_warnings_are_true(entry: Entry):
    """A module flagged as unused must really not take part: autograd is the oracle (none of its
    parameters gets a gradient from a real forward and backward)."""
    model, args, kwargs = entry.build()
    report = shapecheck.explain(model, *args, **kwargs)
    flagged = [w.path for w in report.warnings if w.rule == "unused-module"]
    if not flagged:
        return
    out = model(*args, **kwargs)
    sum(t.float().sum() for t in _tensors(out)).backward()
    for path in flagged:
        used = [n for n, p in model.get_submodule(path).named_parameters() if p.grad is not None]
        assert not used, f"{path} is flagged unused, yet its {used} get gradients"


def _tensors(obj: Any) -> list[torch.Tensor]:
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, dict):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (tuple, list)):
        return [t for v in obj for t in _tensors(v)]
    return []
