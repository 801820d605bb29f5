"""clarify(): the user's own exception, same type and object, with the explanation as a note."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules import module as module_mod

import shapecheck
from shapecheck.demo import seed_model


def _global_hooks() -> tuple[int, int]:
    return len(module_mod._global_forward_hooks), len(module_mod._global_forward_pre_hooks)


def test_context_manager_adds_the_explanation_to_the_seed_error():
    model, image = seed_model(), torch.randn(1, 3, 32, 32)
    with pytest.raises(RuntimeError) as plain:
        model(image)
    hooks = _global_hooks()
    with pytest.raises(RuntimeError) as caught, shapecheck.clarify():
        model(image)
    error = caught.value
    assert type(error) is type(plain.value)
    assert str(error) == str(plain.value)  # the message is untouched: only a note is added
    notes = error.__notes__
    assert len(notes) == 1
    assert notes[0].startswith("shapecheck: the forward pass, layer by layer")
    assert "missing-flatten" in notes[0] or "insert nn.Flatten() at index 6" in notes[0]
    assert "(1, 8, 8, 8)" in notes[0]
    assert _global_hooks() == hooks
    assert error.__traceback__ is not None


def test_decorator_keeps_type_object_and_traceback():
    class Custom(Exception):
        pass

    raised: list[BaseException] = []

    class Raises(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = nn.Linear(2, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            error = Custom("not about shapes")
            raised.append(error)
            raise error

    @shapecheck.clarify()
    def step() -> None:
        Raises()(torch.randn(1, 2))

    with pytest.raises(Custom) as caught:
        step()
    assert caught.value is raised[-1] or type(caught.value) is Custom
    assert str(caught.value) == "not about shapes"
    assert any("Raises" in note for note in getattr(caught.value, "__notes__", []))
    with pytest.raises(Custom):  # the decorator works on every call, not only the first
        step()


def test_nested_modules_annotate_once():
    model = nn.Sequential(nn.Sequential(nn.Linear(3, 3), nn.Linear(4, 2)))
    with pytest.raises(RuntimeError) as caught, shapecheck.clarify():
        model(torch.randn(2, 3))
    notes = caught.value.__notes__
    assert len(notes) == 1
    assert "'0.1'" in notes[0]


def test_keyboard_interrupt_passes_through_untouched():
    class Stop(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            raise KeyboardInterrupt

    hooks = _global_hooks()
    with pytest.raises(KeyboardInterrupt) as caught, shapecheck.clarify():
        Stop()(torch.randn(1))
    assert not getattr(caught.value, "__notes__", [])
    assert _global_hooks() == hooks


def test_working_code_is_unchanged_inside_clarify():
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    x = torch.randn(2, 3)
    expected = model(x)
    with shapecheck.clarify():
        out = model(x)
    torch.testing.assert_close(out, expected)


def test_errors_outside_modules_get_no_note():
    with pytest.raises(ZeroDivisionError) as caught, shapecheck.clarify():
        _ = 1 / 0
    assert not getattr(caught.value, "__notes__", [])


def test_explain_failures_inside_clarify_do_not_recurse():
    """explain() called inside clarify() still reports; clarify does not annotate its replays."""
    with shapecheck.clarify():
        report = shapecheck.explain(seed_model(), torch.randn(1, 3, 32, 32))
    assert report.failure is not None
    assert not getattr(report.failure.exception, "__notes__", [])


class _KeywordOnly(nn.Module):
    """Needs a keyword argument, which clarify()'s global hooks never see."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
        out: torch.Tensor = self.inner(x) * scale
        return out


def test_a_keyword_call_is_explained_at_the_module_that_raised():
    model = _KeywordOnly(seed_model())  # the seed's bug, one level down
    with pytest.raises(RuntimeError, match="64x8 and 512x32") as caught, shapecheck.clarify():
        model(torch.randn(1, 3, 32, 32), scale=2.0)
    (note,) = caught.value.__notes__
    assert "insert nn.Flatten() at index 6" in note
    assert "keyword" not in note  # the replay of the inner Sequential reproduced the error


class _ViewsInForward(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor, *, scale: float) -> torch.Tensor:
        out: torch.Tensor = self.fc(x.view(-1, 3)) * scale
        return out


def test_an_error_no_replay_reproduces_gets_a_plain_note_not_a_wrong_report():
    with pytest.raises(RuntimeError, match="invalid for input of size 8") as caught, \
            shapecheck.clarify():  # fmt: skip
        _ViewsInForward()(torch.randn(2, 4), scale=2.0)
    (note,) = caught.value.__notes__
    assert "cannot see keyword arguments" in note
    assert "shapecheck.explain(model, *args, **kwargs)" in note
    assert "missing 1 required keyword-only argument" not in note  # the replay's own failure


def test_the_note_quotes_the_users_message_and_says_real_forward():
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.MaxPool2d(2), nn.Linear(4096, 2))
    with pytest.raises(RuntimeError) as caught, shapecheck.clarify():
        model(torch.randn(64, 3, 32, 32))
    (note,) = caught.value.__notes__
    assert f"PyTorch   {caught.value}" in note  # their words, not the fake tensors'
    assert "[real forward]" in note
    assert "dry run" not in note.split("fix (")[0]


def test_a_fake_replay_is_said_so_and_put_in_the_users_words(monkeypatch: pytest.MonkeyPatch):
    import dataclasses

    from shapecheck import _clarify, _explain

    real_explain = _explain.explain

    def explain(model: nn.Module, *args: object, **kwargs: object) -> shapecheck.Report:
        report = real_explain(model, *args, **kwargs)  # type: ignore[arg-type]
        if kwargs.get("dry_run") or report.failure is None:
            return report
        # as when the real replay runs out of memory, the failed forward still held
        out_of_memory = dataclasses.replace(report.failure, exception=MemoryError("no room"))
        return dataclasses.replace(report, failure=out_of_memory)

    monkeypatch.setattr(_explain, "explain", explain)
    error = RuntimeError("the words the user got")
    report = _clarify.replay(seed_model(), (torch.randn(1, 3, 32, 32),), {}, error)
    assert report is not None
    assert report.dry_run
    assert report.failure is not None
    assert report.failure.exception is error
    assert ("PyTorch", "the words the user got") in report.diagnoses[0].plan[0].evidence
    note = _clarify.explanation_note(report, error)
    assert note.startswith("shapecheck: the forward pass, layer by layer (replayed on fake tensors")
    assert "PyTorch   the words the user got" in note
