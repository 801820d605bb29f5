"""A tiny GPT and its tensor-parallel plan, correct and with the four typical TP bugs.

The ``build_*`` functions are module-level so that ``shapecheck.explain_ranks`` (a fresh
process per rank) and the real multi-process gloo test can import them by name.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

VOCAB, DIM, HEADS, LAYERS = 1000, 64, 4, 2


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int, global_view: bool = False) -> None:
        super().__init__()
        self.heads, self.head_dim, self.global_view = heads, dim // heads, global_view
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        # the bug: self.heads is the global head count; a rank holds heads // tp of them
        heads = self.heads if self.global_view else -1
        q = self.q(x).view(B, T, heads, self.head_dim).transpose(1, 2)
        k = self.k(x).view(B, T, heads, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, heads, self.head_dim).transpose(1, 2)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, global_view: bool = False) -> None:
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = Attention(dim, heads, global_view)
        self.up, self.down = nn.Linear(dim, 4 * dim), nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class GPT(nn.Module):
    """``shard_rows``: the logits are regrouped assuming every rank holds that many of the
    vocabulary (true for even shards only: the uneven-last-shard bug)."""

    def __init__(self, vocab: int = VOCAB, dim: int = DIM, heads: int = HEADS,
                 layers: int = LAYERS, global_view: bool = False,
                 shard_rows: int | None = None) -> None:  # fmt: skip
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, heads, global_view) for _ in range(layers))
        self.ln = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab, bias=False)
        self.shard_rows = shard_rows

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.emb(idx)
        for block in self.blocks:
            x = block(x)
        logits = self.head(self.ln(x))
        if self.shard_rows is not None:  # rows of this rank's share of the vocabulary
            return logits.view(idx.shape[0], -1, self.shard_rows)
        return logits


def tp_plan(model: GPT, down: str = "rowwise") -> dict[str, object]:
    """Megatron's plan: q, k, v and up Colwise, o and down Rowwise, the head Colwise."""
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

    styles = {"colwise": ColwiseParallel, "rowwise": RowwiseParallel}
    plan: dict[str, object] = {"head": ColwiseParallel()}
    for i in range(len(model.blocks)):
        for name in ("attn.q", "attn.k", "attn.v", "up"):
            plan[f"blocks.{i}.{name}"] = ColwiseParallel()
        plan[f"blocks.{i}.attn.o"] = RowwiseParallel()
        plan[f"blocks.{i}.down"] = styles[down]()
    return plan


def parallel_gpt(mesh: object, down: str = "rowwise", **sizes: object) -> GPT:
    from torch.distributed.tensor.parallel import parallelize_module

    torch.manual_seed(0)
    model = GPT(**sizes)  # type: ignore[arg-type]
    parallelize_module(model, mesh, tp_plan(model, down))  # type: ignore[arg-type]
    return model


def tokens(batch: int = 2, seq: int = 8, vocab: int = VOCAB) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(0))


# -- what explain_ranks and the gloo processes build, by name ---------------------------------
def build_gpt(mesh: object) -> GPT:
    return parallel_gpt(mesh)


def build_uneven_vocab(mesh: object) -> GPT:
    """Vocabulary 1001 over 4 ranks: ranks 0-2 hold 251 rows of the head, rank 3 holds 248."""
    return parallel_gpt(mesh, vocab=1001)


def build_uneven_view(mesh: object) -> GPT:
    """The logits regrouped by the even share ceil(1001 / 4) = 251: wrong on rank 3."""
    return parallel_gpt(mesh, vocab=1001, shard_rows=math.ceil(1001 / 4))


def build_six_heads(mesh: object) -> GPT:
    return parallel_gpt(mesh, dim=96, heads=6, layers=1)


def _meta_7b(mesh: object, vocab: int) -> GPT:
    """A ~7B GPT (32 layers of 4096, 32 heads) on meta: no memory."""
    from torch.distributed.tensor.parallel import parallelize_module

    with torch.device("meta"):
        model = GPT(vocab=vocab, dim=4096, heads=32, layers=32)
    parallelize_module(model, mesh, tp_plan(model))  # type: ignore[arg-type]
    return model


def build_meta_7b(mesh: object) -> GPT:
    return _meta_7b(mesh, 32_000)


def build_meta_7b_uneven(mesh: object) -> GPT:
    """Vocabulary 32,001: over 8 ranks, ranks 0-6 hold 4,001 rows of the head, rank 7 3,994."""
    return _meta_7b(mesh, 32_001)


# -- the real thing: one process per rank, gloo on loopback --------------------------------------
def real_rank(rank: int, world_size: int, port: int, build_name: str, out: str) -> None:
    """Rank ``rank`` of a real ``gloo`` job (``torch.multiprocessing.spawn`` target): build the
    model by name, run it, and save what this rank holds and computed (or what it raised)."""
    import os

    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        model = globals()[build_name](init_device_mesh("cpu", (world_size,)))
        outputs: dict[str, tuple[int, ...]] = {}

        def record(module: nn.Module, args: object, output: torch.Tensor, path: str) -> None:
            outputs.setdefault(path, tuple(output.shape))  # the first call's

        for path, module in model.named_modules():  # after the ParallelStyles' hooks: local
            module.register_forward_hook(lambda m, a, o, path=path: record(m, a, o, path))
        params = {n: tuple(getattr(p, "_local_tensor", p).shape)
                  for n, p in model.named_parameters()}  # fmt: skip
        error = None
        try:
            model(tokens())
        except RuntimeError as raised:
            error = str(raised)
        torch.save({"outputs": outputs, "params": params, "error": error}, f"{out}/{rank}.pt")
    finally:
        dist.destroy_process_group()


def build_colwise_norm(mesh: object) -> GPT:
    """A plan that makes a LayerNorm ColwiseParallel: parallelize_module raises, in the rank."""
    from torch.distributed.tensor.parallel import ColwiseParallel, parallelize_module

    model = GPT(layers=1)
    parallelize_module(model, mesh, {"ln": ColwiseParallel()})  # type: ignore[arg-type]
    return model
