"""explain() leaves no trace: hooks, training flags, parameters, buffers, .grad, RNG state.

Property-tested on models in train mode with BatchNorm (running stats, num_batches_tracked,
cumulative averages) and Dropout, whose forward normally changes all of these.
"""

from __future__ import annotations

from typing import Any

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

import shapecheck


def _state(model: nn.Module) -> dict[str, Any]:
    """Everything explain must not change, by value and by identity."""
    return {
        "params": [(n, id(p), p.detach().clone(), p.requires_grad)
                   for n, p in model.named_parameters()],
        "buffers": [(n, id(b), b.clone()) for n, b in model.named_buffers()],
        "grads": [(n, None if p.grad is None else p.grad.clone())
                  for n, p in model.named_parameters()],
        "training": [(n, m.training) for n, m in model.named_modules()],
        "hooks": [(n, dict(m._forward_hooks), dict(m._forward_pre_hooks),
                   dict(m._forward_hooks_with_kwargs), set(m._forward_hooks_always_called))
                  for n, m in model.named_modules()],
        "children": [(n, id(m), type(m)) for n, m in model.named_modules()],
    }  # fmt: skip


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


def _model(channels: int, momentum: float | None, p: float, broken: bool) -> nn.Module:
    features = channels * 4 * 4
    return nn.Sequential(
        nn.Conv2d(3, channels, 3, padding=1),
        nn.BatchNorm2d(channels, momentum=momentum),
        nn.ReLU(),
        nn.Dropout2d(p),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(features + (1 if broken else 0), 6),
        nn.BatchNorm1d(6, momentum=momentum),
        nn.Dropout(p),
        nn.Linear(6, 2),
    ).train()


def _noop_hook(module: nn.Module, args: Any, output: Any) -> None:
    return None


@given(
    channels=st.integers(1, 4),
    momentum=st.sampled_from([0.1, 0.5, None]),  # None: cumulative average, uses the counter
    p=st.sampled_from([0.0, 0.5]),
    broken=st.booleans(),
    dry_run=st.booleans(),
    with_grads=st.booleans(),
    eval_child=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_explain_has_no_side_effects(
    channels: int, momentum: float | None, p: float, broken: bool, dry_run: bool,
    with_grads: bool, eval_child: bool, seed: int,
):  # fmt: skip
    torch.manual_seed(seed)
    model = _model(channels, momentum, p, broken)
    model[7].num_batches_tracked.fill_(3)  # a model that has trained a little
    if eval_child:
        model[1].eval()
    if with_grads:
        for param in list(model.parameters())[::2]:
            param.grad = torch.randn_like(param)
    user_hook = model[2].register_forward_hook(_noop_hook)
    x = torch.randn(4, 3, 8, 8)
    x_before = x.clone()
    before = _state(model)
    rng = torch.get_rng_state()

    report = shapecheck.explain(model, x, dry_run=dry_run)

    assert report.ok is not broken
    assert torch.equal(torch.get_rng_state(), rng)
    after = _state(model)
    for key in before:
        assert _same(before[key], after[key]), key
    assert torch.equal(x, x_before)
    assert torch.overrides._get_current_function_mode_stack() == []
    # the user's own hook is still there and still the only one
    assert list(model[2]._forward_hooks.values()) == [_noop_hook]
    user_hook.remove()
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_a_real_forward_would_change_what_explain_keeps():
    """The property above is not vacuous: the same model's own forward changes these."""
    torch.manual_seed(0)
    model = _model(2, None, 0.5, broken=False)
    before = _state(model)
    rng = torch.get_rng_state()
    model(torch.randn(4, 3, 8, 8))
    after = _state(model)
    assert not _same(before["buffers"], after["buffers"])
    assert not torch.equal(torch.get_rng_state(), rng)


def test_no_global_hooks_or_modes_left():
    from torch.nn.modules import module as module_mod

    hooks_before = (dict(module_mod._global_forward_hooks),
                    dict(module_mod._global_forward_pre_hooks))  # fmt: skip
    shapecheck.explain(_model(2, 0.1, 0.5, broken=True), torch.randn(2, 3, 8, 8))
    shapecheck.explain(_model(2, 0.1, 0.5, broken=True), torch.randn(2, 3, 8, 8), dry_run=True)
    assert (dict(module_mod._global_forward_hooks),
            dict(module_mod._global_forward_pre_hooks)) == hooks_before  # fmt: skip
    assert torch.overrides._get_current_function_mode_stack() == []
    assert torch.is_grad_enabled()


def test_no_grad_state_is_restored_either_way():
    with torch.no_grad():
        shapecheck.explain(nn.Linear(2, 2), torch.randn(1, 2))
        assert not torch.is_grad_enabled()
    shapecheck.explain(nn.Linear(2, 2), torch.randn(1, 2))
    assert torch.is_grad_enabled()
