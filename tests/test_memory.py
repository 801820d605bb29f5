"""Training memory: saved-tensor bytes by hand, optimizer state against torch.optim itself."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import shapecheck
from shapecheck._memory import OPTIMIZERS

N, A, B, C = 5, 7, 11, 3  # batch, and the MLP's widths


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(A, B), nn.ReLU(), nn.Linear(B, C))


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
@pytest.mark.parametrize("input_grad", [False, True], ids=["x", "x-requires-grad"])
def test_saved_bytes_of_linear_relu_linear_equal_the_hand_count(
    dry_run: bool, input_grad: bool
) -> None:
    # Linear 1 keeps x (N, A) for its weight's gradient; ReLU keeps its output h (N, B), which
    # Linear 2 keeps too (one storage, counted once); the transposed weights autograd keeps are
    # the parameters' own storage, counted under params. float32: 4 bytes an element.
    x = torch.randn(N, A, requires_grad=input_grad)
    report = shapecheck.explain(_mlp(), x, optimizer="sgd", dry_run=dry_run)
    memory = report.training_memory
    assert memory is not None
    assert memory.saved == 4 * N * (A + B)
    params = 4 * (A * B + B + B * C + C)
    assert (memory.params, memory.grads, memory.optimizer_state) == (params, params, 0)
    assert memory.total == 2 * params + 4 * N * (A + B)


def test_a_tensor_saved_by_two_ops_is_counted_once() -> None:
    class TwoHeads(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk, self.left, self.right = nn.Linear(4, 8), nn.Linear(8, 2), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.trunk(x))  # saved by relu, left and right: one storage
            return self.left(h) + self.right(h)

    report = shapecheck.explain(TwoHeads(), torch.randn(6, 4), optimizer="sgd")
    assert report.training_memory is not None
    assert report.training_memory.saved == 4 * 6 * (4 + 8)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_optimizer_state_equals_what_torch_optim_allocates(name: str) -> None:
    model = nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 2))
    model[0].bias.requires_grad_(False)  # frozen: no gradient, no state
    report = shapecheck.explain(model, torch.randn(3, 6), optimizer=name)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = {
        "sgd": lambda: torch.optim.SGD(trainable, lr=0.1),
        "sgd-momentum": lambda: torch.optim.SGD(trainable, lr=0.1, momentum=0.9),
        "adam": lambda: torch.optim.Adam(trainable),
        "adamw": lambda: torch.optim.AdamW(trainable),
    }[name]()
    model(torch.randn(3, 6)).sum().backward()
    optimizer.step()
    tensors = [v for s in optimizer.state.values() for k, v in s.items() if k != "step"]
    state = sum(v.numel() * v.element_size() for v in tensors)
    grads = sum(p.grad.numel() * p.grad.element_size() for p in trainable if p.grad is not None)
    memory = report.training_memory
    assert memory is not None
    assert (memory.optimizer_state, memory.grads) == (state, grads)
    assert memory.params == 4 * sum(p.numel() for p in model.parameters())


def test_tied_weights_and_buffers_are_counted_once() -> None:
    embed = nn.Embedding(10, 4)
    head = nn.Linear(4, 10, bias=False)
    head.weight = embed.weight
    model = nn.Sequential(embed, nn.BatchNorm1d(3), head)
    report = shapecheck.explain(model, torch.zeros(2, 3, dtype=torch.long), optimizer="adam")
    memory = report.training_memory
    assert memory is not None
    assert memory.params == report.param_bytes == 4 * (10 * 4 + 3 + 3)
    assert memory.buffers == report.buffer_bytes > 0


def test_no_optimizer_means_no_memory_run_and_a_bad_name_is_explained() -> None:
    assert shapecheck.explain(_mlp(), torch.randn(N, A)).training_memory is None
    with pytest.raises(shapecheck.UsageError, match=r"'sgd', 'sgd-momentum', 'adam', 'adamw'"):
        shapecheck.explain(_mlp(), torch.randn(N, A), optimizer="rmsprop")


def test_the_memory_run_leaves_grad_mode_and_the_model_untouched() -> None:
    model = _mlp()
    before = [p.detach().clone() for p in model.parameters()]
    with torch.no_grad():
        report = shapecheck.explain(model, torch.randn(N, A), optimizer="adam")
        assert not torch.is_grad_enabled()
    assert report.training_memory is not None
    assert report.training_memory.saved == 4 * N * (A + B)  # measured even under no_grad
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


def test_training_memory_is_rendered_and_serialised() -> None:
    report = shapecheck.explain(_mlp(), torch.randn(N, A), optimizer="adamw")
    memory = report.training_memory
    assert memory is not None
    text = str(report)
    assert "training   ≈" in text
    assert "adamw" in text
    assert max(len(line) for line in text.splitlines()) <= 100
    data = report.to_dict()["training_memory"]
    assert data["saved"] == memory.saved
    assert data["total"] == memory.total
