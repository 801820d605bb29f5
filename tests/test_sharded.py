"""Sharded models in one process, on PyTorch's fake process group: what each row reports
equals what DTensor itself reports, bytes are this rank's shards, and the TP bugs that rank 0
sees are diagnosed with a verified fix. Ranks other than 0 run in fresh processes
(tests/test_sharded_ranks.py): DTensor's caches are not keyed by rank.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import shapecheck
from shapecheck import UsageError
from shapecheck._compat import torch_at_least
from shapecheck._sharding import placement_text

if not torch_at_least("2.5"):  # DTensor became public (torch.distributed.tensor) in 2.5
    pytest.skip("sharded models need torch >= 2.5", allow_module_level=True)
import sharded_models as sm
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor, Shard


def _fully_shard(mesh: Any) -> Any:
    """FSDP2's ``fully_shard`` (public in torch.distributed.fsdp from torch 2.6), once torch's
    own FSDP2 has run a forward on ``mesh`` (torch 2.6's cannot on CPU: its all-gather stream
    has no ``record_event``)."""
    if not torch_at_least("2.6"):
        pytest.skip("FSDP2's public fully_shard needs torch >= 2.6")
    from torch.distributed.fsdp import fully_shard

    probe = fully_shard(nn.Linear(mesh.size(), 2), mesh=mesh)
    try:
        probe(torch.ones(1, mesh.size()))
    except AttributeError as error:
        if "record_event" not in str(error):
            raise
        pytest.skip(f"torch {torch.__version__}'s FSDP2 cannot run a forward on CPU ({error})")
    return fully_shard


@pytest.fixture
def world(request: pytest.FixtureRequest) -> Iterator[Any]:
    """A mesh over a fake world of ``request.param`` ranks (default 4), as rank 0."""
    size = getattr(request, "param", 4)
    with shapecheck.fake_world(size, rank=0):
        yield init_device_mesh("cpu", (size,))


def _what_dtensor_says(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, Any]]:
    """Per module, from DTensor itself on a plain forward: its DTensor argument's local and
    global shape and placements (once the ParallelStyle made it), the global shape of its
    DTensor output (before the style makes it local), and the local output."""
    seen: dict[str, dict[str, Any]] = {}
    handles = []

    def describe(t: DTensor) -> tuple[Any, ...]:
        return (tuple(t.to_local().shape), tuple(t.shape), tuple(map(placement_text, t.placements)))

    for path, module in model.named_modules():

        def before(m: nn.Module, args: tuple[Any, ...], path: str = path) -> None:
            found = seen.setdefault(path, {})
            found.setdefault("input", describe(args[0]) if isinstance(args[0], DTensor) else None)

        def whole(m: nn.Module, args: Any, out: Any, path: str = path) -> None:
            seen[path].setdefault("global", tuple(out.shape) if isinstance(out, DTensor) else None)

        def after(m: nn.Module, args: Any, out: Any, path: str = path) -> None:
            seen[path].setdefault("output", tuple(out.shape))

        handles += [module.register_forward_pre_hook(before), module.register_forward_hook(after),
                    module.register_forward_hook(whole, prepend=True)]  # fmt: skip
    model(x)
    for handle in handles:
        handle.remove()
    return seen


def _output_layout(plan: dict[str, Any], path: str, rank: int) -> tuple[str, ...]:
    """The placement the plan gives a layer's output: Colwise ``Shard(-1)``, Rowwise ``R``."""
    (layout,) = plan[path].output_layouts
    return (f"S({layout.dim % rank})",) if isinstance(layout, Shard) else ("R",)


@pytest.mark.parametrize("world", [2, 4], indirect=True)
def test_every_row_shows_what_dtensor_reports(world: Any) -> None:
    model = sm.parallel_gpt(world)
    plan = sm.tp_plan(model)
    truth = _what_dtensor_says(model, sm.tokens())
    report = shapecheck.explain(model, sm.tokens())
    assert report.ok
    assert (report.rank, report.world_size, report.mesh_shape) == (0, world.size(), (world.size(),))
    checked = 0
    for layer in (x for x in report.layers if x.kind == "module"):
        said = truth[layer.path]
        assert layer.outputs[0].shape == said["output"], layer.path
        if layer.path in plan:  # a parallelised layer: its input and output, global too
            given = layer.inputs[0]
            assert (given.shape, given.global_shape, given.placements) == said["input"]
            out = layer.outputs[0]
            assert out.global_shape == said["global"], layer.path
            assert out.placements == _output_layout(plan, layer.path, len(out.shape))
            checked += 1
        else:
            assert all(t.global_shape is None for t in layer.outputs), layer.path
    assert checked == len(plan)


@pytest.mark.parametrize("world", [2, 4], indirect=True)
def test_rank_bytes_are_the_sum_of_the_local_shards(world: Any) -> None:
    model = sm.parallel_gpt(world, vocab=1001)
    report = shapecheck.explain(model, sm.tokens(), optimizer="adam")
    local = [p.to_local() if isinstance(p, DTensor) else p for p in model.parameters()]
    held = sum(t.numel() * t.element_size() for t in local)
    assert report.rank_param_bytes == held
    assert report.param_bytes == sum(p.numel() * 4 for p in model.parameters())  # global
    assert report.total_params == sum(p.numel() for p in model.parameters())
    memory = report.training_memory
    assert memory is not None
    assert memory.params == memory.grads == held
    assert memory.optimizer_state == 2 * held
    for layer in report.layers:
        if layer.kind == "module":
            own = model.get_submodule(layer.path)._parameters.values()
            shards = [p.to_local() if isinstance(p, DTensor) else p for p in own if p is not None]
            assert layer.rank_params == sum(t.numel() for t in shards), layer.path
            assert layer.rank_param_bytes == sum(t.numel() * 4 for t in shards), layer.path


@pytest.mark.parametrize("world", [8], indirect=True)
def test_fsdp2_on_eight_ranks_counts_the_sharded_bytes(world: Any) -> None:
    fully_shard = _fully_shard(world)

    model = sm.GPT()
    for block in model.blocks:
        fully_shard(block, mesh=world)
    fully_shard(model, mesh=world)
    before = {n: (type(p), p.to_local().shape) for n, p in model.named_parameters()}
    report = shapecheck.explain(model, sm.tokens(), optimizer="adam")
    plain = shapecheck.explain(sm.GPT(), sm.tokens(), optimizer="adam")
    held = sum(p.to_local().numel() * 4 for p in model.parameters())
    assert report.ok
    assert report.output_shapes == plain.output_shapes == [(2, 8, sm.VOCAB)]
    assert report.rank_param_bytes == held
    assert held * 8 == plain.param_bytes  # every dim of this GPT divides by 8
    memory = report.training_memory
    assert memory is not None
    assert memory.params == held
    assert memory.optimizer_state == 2 * held
    assert plain.training_memory is not None
    assert memory.saved == plain.training_memory.saved  # FSDP shards weights, not activations
    assert report.layer("emb").rank_params == sm.VOCAB * sm.DIM // 8
    assert report.layer("emb").param_placements == (("weight", ("S(0)",)),)
    # the root's forward leaves its weights gathered for the backward: put back as they were
    after = {n: (type(p), p.to_local().shape) for n, p in model.named_parameters()}
    assert after == before


def test_meta_model_dry_run_matches_the_real_one(world: Any) -> None:
    real = shapecheck.explain(sm.parallel_gpt(world, vocab=1001), sm.tokens())
    with torch.device("meta"):
        model = sm.GPT(vocab=1001)
    from torch.distributed.tensor.parallel import parallelize_module

    parallelize_module(model, world, sm.tp_plan(model))
    dry = shapecheck.explain(model, sm.tokens())
    assert dry.dry_run
    assert dry.ok
    assert not real.dry_run

    def seen(report: shapecheck.Report) -> list[Any]:  # the devices differ: meta and cpu
        return [(t.shape, t.global_shape, t.placements)
                for x in report.layers for t in (*x.inputs, *x.outputs)]  # fmt: skip

    assert seen(dry) == seen(real)
    assert dry.rank_param_bytes == real.rank_param_bytes


def test_rows_render_local_then_global(world: Any) -> None:
    report = shapecheck.explain(sm.parallel_gpt(world, layers=1), sm.tokens())
    text = str(report)
    q = text.splitlines()[
        next(i for i, line in enumerate(text.splitlines()) if "attn.q  Linear" in line) + 1
    ]
    assert "↳ weight,bias S(0) · 4.1 KiB" in q
    assert "(2, 8, 64) R" in q
    assert "(2, 8, 64) S(2)" in q
    assert "of 4,160" in q
    assert "rank       0 of 4 (mesh (4,)) holds" in text
    data = json.loads(json.dumps(report.to_dict()))
    assert (data["rank"], data["world_size"], data["mesh_shape"]) == (0, 4, [4])
    row = next(r for r in data["layers"] if r["path"] == "blocks.0.attn.q")
    assert row["outputs"][0]["global_shape"] == [2, 8, 64]
    assert row["rank_params"] == 1040
    assert row["param_placements"]["weight"] == ["S(0)"]


# -- the TP bugs rank 0 sees ---------------------------------------------------------------------
def _first(report: shapecheck.Report) -> shapecheck.Diagnosis:
    assert report.failure is not None
    assert report.diagnoses
    return report.diagnoses[0]


def test_heads_that_do_not_divide_over_the_ranks(world: Any) -> None:
    report = shapecheck.explain(sm.build_six_heads(world), sm.tokens())
    first = _first(report)
    assert (first.rule, first.path, report.failure.type) == (
        "tp-divisible",
        "blocks.0.attn",
        "view",
    )  # type: ignore[union-attr]
    assert "96 / 4 = 24;  24 / 16 = 1.5 heads per rank" in first.message
    assert first.verified
    assert first.verified_by == "real run"
    advice = [d for d in report.diagnoses if d.rule == "tp-divisible" and not d.verified]
    assert advice
    assert "2, 3 or 6" in advice[0].plan[0].change.summary


def test_a_global_head_count_in_a_local_view(world: Any) -> None:
    report = shapecheck.explain(sm.parallel_gpt(world, global_view=True), sm.tokens())
    first = _first(report)
    assert (first.rule, first.path) == ("tp-global-size", "blocks.0.attn")
    assert "4*16 = 64 is dim 2's global size; this rank holds 64 / 4 = 16 of it" in (first.message)
    assert first.verified
    assert first.output_shapes_after_fix == [(2, 8, sm.VOCAB // 4)]
    assert first.plan[0].change.sizes == (2, 8, 1, 16)  # type: ignore[attr-defined]


def test_colwise_feeding_colwise(world: Any) -> None:
    model = sm.parallel_gpt(world, down="colwise")
    report = shapecheck.explain(model, sm.tokens())
    first = _first(report)
    assert (first.rule, first.path) == ("tp-colwise-colwise", "blocks.0.down")
    assert "'blocks.0.up' (Linear(64→256)) is ColwiseParallel: each rank holds 256 / 4 = 64" in (
        first.message
    )
    assert first.verified
    assert first.verified_by == "real run"
    fixed = first.apply(model)  # the plan kept: down made RowwiseParallel, on the same mesh
    assert fixed(sm.tokens()).shape == (2, 8, sm.VOCAB // 4)
    assert fixed.get_submodule("blocks.0.down").weight.placements == (Shard(1),)


# -- the rest of the contract --------------------------------------------------------------------
def test_fake_world_says_what_is_wrong() -> None:
    with pytest.raises(UsageError, match="world_size must be an int >= 1"):
        shapecheck.fake_world(0).__enter__()
    with pytest.raises(UsageError, match=r"rank must be an int in 0\.\.3"):
        shapecheck.fake_world(4, rank=4).__enter__()
    with shapecheck.fake_world(2), pytest.raises(UsageError, match="already initialised"):
        shapecheck.fake_world(2).__enter__()
    with shapecheck.fake_world(4):  # rank 0 of 4, as the other tests of this process
        pass
    with pytest.raises(UsageError, match="one process per rank"):
        shapecheck.fake_world(4, rank=1).__enter__()


def test_plain_use_imports_no_distributed_module() -> None:
    code = (
        "import sys, torch; before = set(sys.modules)\n"
        "import shapecheck; from torch import nn\n"
        "shapecheck.explain(nn.Sequential(nn.Linear(3, 4)), torch.randn(2, 3), optimizer='adam')\n"
        "print(sorted(m for m in set(sys.modules) - before if 'distributed' in m))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"


def test_readme_fake_world_snippet_does_what_its_comments_say() -> None:
    import ast
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Sharded models") :]
    script, snippet = re.findall(r"```python\n(.*?)```", section, re.S)[:2]
    scope: dict[str, Any] = {"__name__": "tp_example"}  # its classes and build, not its main
    exec(script, scope)
    lines, checked = snippet.splitlines(), 0
    for node in ast.parse(snippet).body:  # each statement; an expression checks its comment
        statement = ast.get_source_segment(snippet, node)
        assert statement is not None
        if not isinstance(node, ast.Expr):
            exec(statement, scope)
            continue
        claim = lines[node.lineno - 1].partition("#")[2].strip().split("  ")[0]
        assert eval(statement, scope) == ast.literal_eval(claim), statement
        checked += 1
    assert checked == 6


# -- drawn shapes: the right TP rule first, and its fix verified ---------------------------------
class _MLP(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.up, self.down = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.relu(self.up(x)))


@settings(max_examples=12, deadline=None, derandomize=True)
@given(
    tp=st.sampled_from([2, 4]),
    heads=st.integers(1, 8),
    head_dim=st.sampled_from([4, 8]),
    kind=st.sampled_from(["global heads", "-1", "colwise twice"]),
)
def test_drawn_tp_shapes_get_the_right_rule(tp: int, heads: int, head_dim: int, kind: str) -> None:
    from torch.distributed.tensor.parallel import (
        ColwiseParallel,
        RowwiseParallel,
        parallelize_module,
    )

    dim = heads * head_dim
    with shapecheck.fake_world(tp, rank=0):
        mesh = init_device_mesh("cpu", (tp,))
        if kind == "colwise twice":
            model: nn.Module = _MLP(dim, 4 * dim)
            plan = {"up": ColwiseParallel(), "down": ColwiseParallel()}
        else:
            model = sm.Attention(dim, heads, global_view=kind == "global heads")
            plan = {"q": ColwiseParallel(), "k": ColwiseParallel(), "v": ColwiseParallel(),
                    "o": RowwiseParallel()}  # fmt: skip
        parallelize_module(model, mesh, plan)
        report = shapecheck.explain(model, torch.randn(2, 3, dim))
    if kind == "colwise twice":
        expected = "tp-colwise-colwise"
    elif heads % tp:
        expected = "tp-divisible"
    else:
        expected = "tp-global-size" if kind == "global heads" else None
    if expected is None:
        assert report.ok, report.failure
        return
    first = _first(report)
    assert first.rule == expected, [d.rule for d in report.diagnoses]
    assert first.verified, first.message
    assert first.verified_by == "real run"


@pytest.mark.parametrize("world", [8], indirect=True)
def test_two_d_mesh_fsdp_over_tp_counts_every_rank(world: Any) -> None:
    """dp 2 x tp 4: TP on mesh["tp"], FSDP2 on mesh["dp"] (strided shards of the TP shards)."""
    from shapecheck._rank_child import every_rank
    from shapecheck._ranks import Job

    mesh = init_device_mesh("cpu", (2, 4), mesh_dim_names=("dp", "tp"))
    fully_shard = _fully_shard(mesh["dp"])
    model = sm.parallel_gpt(mesh["tp"], vocab=1001)
    for block in model.blocks:
        fully_shard(block, mesh=mesh["dp"])
    fully_shard(model, mesh=mesh["dp"])
    report = shapecheck.explain(model, sm.tokens())
    held = sum(p.to_local().numel() * 4 for p in model.parameters())
    assert report.ok
    assert report.rank_param_bytes == held
    assert report.mesh_shape == (2, 4)
    assert ("weight", ("S(0, sf=4)", "S(0)")) in report.layer("head").param_placements
    job = Job("", "", None, (), {}, 8, (2, 4), ("dp", "tp"))
    ranks = every_rank(model, job)
    assert ranks is not None  # worked out for every rank, and right for this one
    assert ranks[0].nbytes == held
    groups: dict[Any, list[int]] = {}
    for rank, shards in enumerate(ranks):
        groups.setdefault(shards.shapes, []).append(rank)
    # tp rank 3 (ranks 3 and 7) holds 248 rows of the head; dp rank 1 the second FSDP halves
    assert sorted(groups.values()) == [[0, 1, 2], [3], [4, 5, 6], [7]]
