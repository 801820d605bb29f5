"""explain_ranks against the real thing: the same TP model run by 4 real processes over gloo
on loopback must hold and compute, rank by rank, what the fake world reported, including rank
3's shorter shard of an uneven vocabulary (1001 over 4) and the view it breaks.

Processes are slow to start: one explain_ranks and one gloo job are shared by the tests here.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path
from typing import Any

import pytest
import torch

import shapecheck
from shapecheck import UsageError
from shapecheck._compat import torch_at_least

if not torch_at_least("2.5"):  # DTensor became public (torch.distributed.tensor) in 2.5
    pytest.skip("sharded models need torch >= 2.5", allow_module_level=True)
import sharded_models as sm

WORLD = 4


@pytest.fixture(scope="module")
def ranks() -> shapecheck.RankReports:
    return shapecheck.explain_ranks(sm.build_uneven_view, sm.tokens(), world_size=WORLD)


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, Any]]:
    """What each of 4 real gloo processes held, computed and raised."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("gloo")
    with socket.socket() as free:  # a free port on loopback for the rendezvous
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    mp.spawn(sm.real_rank, args=(WORLD, port, "build_uneven_view", str(out)), nprocs=WORLD)
    return [torch.load(out / f"{rank}.pt") for rank in range(WORLD)]


def test_ranks_are_grouped_by_their_shards(ranks: shapecheck.RankReports) -> None:
    assert [g.ranks for g in ranks.groups] == [(0, 1, 2), (3,)]
    assert [g.report.rank for g in ranks.groups] == [0, 3]
    assert ranks.group(3).params < ranks.group(0).params  # 248 rows of the head, not 251
    assert ranks.report(1) is ranks.report(0)
    assert not ranks.ok


def test_each_real_rank_holds_what_explain_ranks_reports(
    ranks: shapecheck.RankReports, real: list[dict[str, Any]]
) -> None:
    for rank, seen in enumerate(real):
        group = ranks.group(rank)
        assert dict(group.param_shapes) == seen["params"], rank
        held = sum(torch.Size(s).numel() * 4 for s in seen["params"].values())
        assert ranks.rank_param_bytes[rank] == held == group.report.rank_param_bytes, rank


def test_each_real_rank_computes_what_explain_ranks_reports(
    ranks: shapecheck.RankReports, real: list[dict[str, Any]]
) -> None:
    for rank, seen in enumerate(real):
        report = ranks.report(rank)
        for path, output in seen["outputs"].items():
            assert report.layer(path).output_shapes[0] == output, (rank, path)
        assert report.layer("head").outputs[0].shape == (2, 8, 248 if rank == 3 else 251)
        assert report.layer("head").outputs[0].global_shape == (2, 8, 1001)
    # the uneven last shard breaks the view on rank 3 only, as in the real run
    assert [seen["error"] is None for seen in real] == [True, True, True, False]
    failure = ranks.report(3).failure
    assert failure is not None
    assert failure.message == real[3]["error"].splitlines()[0]
    assert ranks.report(0).output_shapes == [(2, 8, 251)]


def test_the_uneven_last_shard_is_diagnosed_with_a_verified_fix(
    ranks: shapecheck.RankReports,
) -> None:
    first = ranks.report(3).diagnoses[0]
    assert (first.rule, first.path) == ("tp-uneven-shard", "")
    assert "ranks 0-2 hold 251, rank 3 248" in first.message
    assert "ceil(1001 / 4) = 251;  1001 - 3 * 251 = 248" in first.message
    assert first.verified
    assert first.output_shapes_after_fix == [(2, 8, 251)]
    text = str(ranks)
    assert "0-2 " in text
    assert "fails at forward (view): tp-uneven-shard" in text
    assert "ranks 3 (traced on rank 3):" in text
    data = json.loads(json.dumps(ranks.to_dict()))
    assert [g["ranks"] for g in data["groups"]] == [[0, 1, 2], [3]]
    assert data["groups"][1]["param_shapes"]["head.weight"] == [248, sm.DIM]
    assert data["groups"][1]["report"]["diagnoses"][0]["rule"] == "tp-uneven-shard"


def _nested(mesh: Any) -> Any:
    return mesh


def test_build_must_be_importable_by_name() -> None:
    def local(mesh: Any) -> Any:
        return mesh

    for build, says in [(lambda mesh: mesh, "<lambda>', not a top-level function"),
                        (local, "not a top-level function"),
                        (print, "build must be a function")]:  # fmt: skip
        with pytest.raises(UsageError, match=says):
            shapecheck.explain_ranks(build, world_size=2)
    with pytest.raises(UsageError, match="mesh_shape must be"):
        shapecheck.explain_ranks(_nested, world_size=4, mesh_shape=(3, 2))
    with pytest.raises(UsageError, match="they must pickle"):
        shapecheck.explain_ranks(_nested, world_size=2, loss_fn=lambda out, y: out.sum())


def test_readme_worked_example_prints_what_the_readme_shows(tmp_path: Path) -> None:
    import re
    import subprocess
    import sys

    path = Path(__file__).resolve().parents[1] / "README.md"
    readme = path.read_text(encoding="utf-8")
    section = readme[readme.index("## Sharded models") :]
    code, shown = re.findall(r"```(?:python|text)\n(.*?)```", section, re.S)[:2]
    script = tmp_path / "tp_example.py"
    script.write_text(code, encoding="utf-8")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    actual = done.stdout.strip()
    if os.environ.get("SHAPECHECK_UPDATE_GOLDEN") == "1" and actual != shown.strip():
        path.write_text(readme.replace(shown.strip(), actual), encoding="utf-8")
        pytest.skip("README's sharded example rewritten from the real output; review the diff")
    assert actual == shown.strip()


def test_what_build_raises_on_a_rank_is_raised_here_with_its_traceback() -> None:
    with pytest.raises(NotImplementedError, match=r"only support nn\.Linear") as raised:
        shapecheck.explain_ranks(sm.build_colwise_norm, sm.tokens(), world_size=2)
    (note,) = raised.value.__notes__
    assert note.startswith("shapecheck: raised on rank 0, in its own process:")
    assert 'parallelize_module(model, mesh, {"ln": ColwiseParallel()})' in note
