"""FLOPs per layer: hand counts for the kernels torch's registry misses, the ops left uncounted,
and per-module figures equal to torch's FlopCounterMode (given the same formulas)."""

from __future__ import annotations

import doctest
import math
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode, flop_registry

import shapecheck
from shapecheck import _flop_formulas, _flops
from shapecheck._compat import aten_ops, torch_at_least
from shapecheck._flop_formulas import FORMULAS, does_work
from shapecheck._flops import FlopCounter
from shapecheck._render import flops_text as lower_bound_text

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import benchzoo as zoo
import flops_check

Factory = Callable[[], tuple[nn.Module, tuple[torch.Tensor, ...]]]

ZOO: dict[str, Factory] = {
    "seed_cnn": lambda: zoo.seed_cnn(batch=2),
    "resnet50": lambda: zoo.resnet50(batch=2, size=32),  # 2: train-mode BN on 1x1 maps
    "gpt2_small": lambda: zoo.gpt2_small(batch=1, seq=16),
    "lstm": lambda: zoo.lstm(batch=2, seq=8),
    "decoder_meta": lambda: zoo.decoder(2, 64, 4, vocab=100, seq=8, device="meta"),
}
#: our formulas for what torch's registry lacks: FlopCounterMode given them is the oracle
GAPS = {k: v for k, v in FORMULAS.items() if k not in flop_registry}


# -- helpers --------------------------------------------------------------------------------------
class _Dispatched(TorchDispatchMode):  # type: ignore[no-untyped-call]
    """The aten ops a call really dispatches (no decomposition offered)."""

    def __init__(self) -> None:
        super().__init__()  # type: ignore[no-untyped-call]
        self.names: set[str] = set()

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        self.names.add(func._overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _count(run: Callable[[], Any]) -> tuple[FlopCounter, set[str]]:
    """FlopCounter over ``run`` (no grad), and what ``run`` dispatches when run again."""
    with torch.no_grad(), FlopCounter() as counter:
        run()
    with torch.no_grad(), _Dispatched() as seen:
        run()
    return counter, seen.names


def _explained(model: nn.Module, *inputs: Any, **kwargs: Any) -> int:
    report = shapecheck.explain(model, *inputs, flops=True, **kwargs)
    assert report.ok, report
    assert report.total_flops is not None
    return report.total_flops


def rnn_hand_count(
    gates: int, size: int, hidden: int, layers: int, directions: int, tokens: int, proj: int = 0
) -> int:
    """2 FLOPs per multiply-add of each token with each weight matrix of each layer/direction:
    w_ih (G*H, in), w_hh (G*H, out) and, with projections, w_hr (P, H)."""
    out = proj or hidden
    total = 0
    for layer in range(layers):
        width = size if layer == 0 else out * directions
        per_token = gates * hidden * width + gates * hidden * out + proj * hidden
        total += directions * 2 * tokens * per_token
    return total


def attention_hand_count(batch_heads: int, s_q: int, s_k: int, d: int, d_v: int) -> int:
    """q @ k^T: 2*s_q*s_k*d per head; softmax(scores) @ v: 2*s_q*s_k*d_v per head."""
    return batch_heads * (2 * s_q * s_k * d + 2 * s_q * s_k * d_v)


def encoder_hand_count(layers: int, batch: int, seq: int, d: int, ff: int) -> int:
    """Per layer: qkv (3d x d), out-proj (d x d), ff (ff x d, d x ff) per token; attention."""
    linears = 2 * batch * seq * (3 * d * d + d * d + 2 * d * ff)
    return layers * (linears + attention_hand_count(batch, seq, seq, d, d))


# -- recurrent ------------------------------------------------------------------------------------
RNNS = {"LSTM": (nn.LSTM, 4), "GRU": (nn.GRU, 3), "RNN": (nn.RNN, 1)}


@pytest.mark.parametrize("kind", sorted(RNNS))
@pytest.mark.parametrize("batch_first", [False, True], ids=["seq_first", "batch_first"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_recurrent_flops_equal_the_hand_count(
    kind: str, batch_first: bool, bidirectional: bool, train: bool
) -> None:
    cls, gates = RNNS[kind]
    torch.manual_seed(0)
    model = cls(6, 10, num_layers=2, batch_first=batch_first, bidirectional=bidirectional)
    model.train(train)
    x = torch.randn(3, 5, 6)  # 15 tokens either way
    hand = rnn_hand_count(gates, 6, 10, 2, 1 + bidirectional, tokens=15)
    counter, seen = _count(lambda: model(x))
    assert counter.total == hand
    assert counter.uncounted == {}
    onednn = kind == "LSTM" and torch.backends.mkldnn.is_available()  # CPU's LSTM kernel
    assert ("mkldnn_rnn_layer" in seen) == onednn
    with FlopCounter() as grad_counter:  # autograd on: the same kernels
        model(x)
    with torch.inference_mode(), FlopCounter() as inference:  # aten.lstm & co. reach the mode
        model(x)  # and are decomposed: their parts count
    assert grad_counter.total == inference.total == hand
    if not train:  # explain once per layout: train mode runs the same kernels (counted above)
        assert _explained(model, x) == hand
        assert _explained(model, x, dry_run=True) == hand
        assert _explained(model, x, dry_run=True, device="meta") == hand  # the decomposed cell


@pytest.mark.filterwarnings("ignore:LSTM with projections is not supported:UserWarning")
def test_lstm_with_projections_and_packed_sequences_equal_the_hand_count() -> None:
    torch.manual_seed(0)
    lstm = nn.LSTM(6, 10, num_layers=2, proj_size=4)  # oneDNN has no projections: the cell runs
    x = torch.randn(5, 3, 6)
    assert _explained(lstm, x) == rnn_hand_count(4, 6, 10, 2, 1, tokens=15, proj=4)
    packed = nn.utils.rnn.pack_padded_sequence(x, [5, 4, 2])  # 11 tokens really run
    gru = nn.GRU(6, 10, num_layers=2)
    counter, _ = _count(lambda: gru(packed))
    assert counter.total == rnn_hand_count(3, 6, 10, 2, 1, tokens=11)


def test_lstm_on_simulated_cuda_counts_the_fused_cell_path() -> None:
    """Fake CUDA tensors with cuDNN off take CUDA's cell path: the gates by mm, the rest in
    _thnn_fused_lstm_cell (a CPU build has no cuDNN anyway)."""
    from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

    mode = FakeTensorMode(allow_non_fake_inputs=True)
    cuda = torch.device("cuda")
    lstm = nn.LSTM(6, 10, num_layers=2)
    state = {k: FakeTensor(mode, v.detach().to("meta"), cuda) for k, v in lstm.named_parameters()}
    x = FakeTensor(mode, torch.empty(5, 3, 6, device="meta"), cuda)
    cudnn_off = torch.backends.cudnn.flags(enabled=False)
    with cudnn_off, torch.no_grad(), mode, FlopCounter() as counter, _Dispatched() as seen:
        torch.func.functional_call(lstm, state, (x,))
    assert "_thnn_fused_lstm_cell" in seen.names
    assert counter.total == rnn_hand_count(4, 6, 10, 2, 1, tokens=15)
    assert counter.uncounted == {}


def test_the_cudnn_formula_counts_every_layer_and_direction() -> None:
    """No GPU here: the formula itself, on the weights nn.LSTM hands to _cudnn_rnn."""
    ops = aten_ops("_cudnn_rnn", "miopen_rnn")
    lstm = nn.LSTM(6, 10, num_layers=3, bidirectional=True, proj_size=4)
    x = torch.empty(7, 2, 6)
    for op in ops:
        flops = FORMULAS[op._overloadpacket](x, lstm._flat_weights, 5, None, None, None)
        assert flops == rnn_hand_count(4, 6, 10, 3, 2, tokens=14, proj=4)


# -- attention ------------------------------------------------------------------------------------
SDPA_CASES: dict[str, tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...], dict[str, Any]]] = {
    "plain": ((2, 4, 6, 8), (2, 4, 7, 8), (2, 4, 7, 8), {}),
    "causal": ((2, 4, 7, 8), (2, 4, 7, 8), (2, 4, 7, 8), {"is_causal": True}),
    "bool_mask": ((2, 4, 6, 8), (2, 4, 7, 8), (2, 4, 7, 8), {"mask": True}),
    "gqa": ((2, 4, 6, 8), (2, 2, 7, 8), (2, 2, 7, 8), {"enable_gqa": True}),
    "value_dim_differs": ((2, 4, 6, 8), (2, 4, 7, 8), (2, 4, 7, 5), {}),  # the math kernel
    "unbatched": ((4, 6, 8), (4, 7, 8), (4, 7, 8), {}),
}


class _Attention(nn.Module):
    def __init__(self, mask: bool = False, **options: Any) -> None:
        super().__init__()
        self.mask, self.options = mask, options

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        ones = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device)
        mask = ones.tril() if self.mask else None
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, **self.options)


@pytest.mark.parametrize("case", sorted(SDPA_CASES))
def test_cpu_sdpa_equals_the_hand_count(case: str) -> None:
    q_shape, k_shape, v_shape, options = SDPA_CASES[case]
    if "enable_gqa" in options and not aten_ops("_scaled_dot_product_fused_attention_overrideable"):
        pytest.skip("enable_gqa arrived with torch 2.5")
    torch.manual_seed(0)
    q, k, v = torch.randn(q_shape), torch.randn(k_shape), torch.randn(v_shape)
    model = _Attention(**options)
    # causal or masked, the whole score matrix is counted, as torch's own formula does
    hand = attention_hand_count(math.prod(q_shape[:-2]), q_shape[-2], k_shape[-2], 8, v_shape[-1])
    counter, seen = _count(lambda: model(q, k, v))
    assert counter.total == hand
    assert counter.uncounted == {}
    # the CPU flash kernel takes grouped heads on the torch tested here; older ones take the math
    # path for them, which the count above covers all the same
    if case in {"plain", "causal"} or (case == "gqa" and torch_at_least("2.13")):
        assert "_scaled_dot_product_flash_attention_for_cpu" in seen
    assert _explained(model, q, k, v) == hand
    assert _explained(model, q, k, v, dry_run=True) == hand
    assert _explained(model, q, k, v, dry_run=True, device="meta") == hand  # the math path


def test_our_sdpa_formula_agrees_with_torch_where_torch_has_one() -> None:
    q, kv = torch.empty(2, 4, 6, 8, device="meta"), torch.empty(2, 4, 7, 8, device="meta")
    shared = [p for p in FORMULAS if p in flop_registry]
    assert shared, "torch counts the CUDA SDPA kernels: the formulas should overlap there"
    for packet in shared:
        ours = FORMULAS[packet](q, kv, kv, out_val=None)
        assert ours == flop_registry[packet](q, kv, kv, out_val=None), packet
        assert ours == attention_hand_count(8, 6, 7, 8, 8)


def test_native_multi_head_attention_fast_path_equals_the_hand_count() -> None:
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 4, batch_first=True).eval()
    x = torch.randn(3, 5, 16)
    hand = 2 * 15 * (3 * 16 * 16 + 16 * 16) + attention_hand_count(3, 5, 5, 16, 16)
    for need_weights in (True, False):
        counter, seen = _count(lambda w=need_weights: mha(x, x, x, need_weights=w))
        assert "_native_multi_head_attention" in seen
        assert (counter.total, counter.uncounted) == (hand, {})
        assert _explained(mha, x, x, x, need_weights=need_weights) == hand


def _encoder(layers: int = 2, d: int = 16, ff: int = 24, **options: Any) -> nn.TransformerEncoder:
    layer = nn.TransformerEncoderLayer(d, 4, ff, batch_first=True, **options)
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


@pytest.mark.parametrize("dropout", [0.0, 0.1], ids=["no_dropout", "dropout"])
@pytest.mark.parametrize("norm_first", [False, True], ids=["post_norm", "pre_norm"])
def test_transformer_encoder_in_eval_and_train_equals_the_hand_count(
    dropout: float, norm_first: bool
) -> None:
    torch.manual_seed(0)
    model = _encoder(dropout=dropout, norm_first=norm_first, activation="gelu")
    x = torch.randn(3, 5, 16)
    hand = encoder_hand_count(2, 3, 5, 16, 24)
    model.eval()
    counter, seen = _count(lambda: model(x))
    assert "_transformer_encoder_layer_fwd" in seen  # the fused fast path, eval without grad
    assert (counter.total, counter.uncounted) == (hand, {})
    model.train()  # dropout > 0 turns SDPA to its math kernel: bmm, counted by torch
    counter, seen = _count(lambda: model(x))
    assert "_transformer_encoder_layer_fwd" not in seen
    assert (counter.total, counter.uncounted) == (hand, {})
    for train in (False, True):
        model.train(train)
        assert _explained(model, x) == hand
        assert _explained(model, x, dry_run=True) == hand


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
def test_the_encoder_fast_path_on_padded_input_counts_the_real_tokens() -> None:
    """With a padding mask the fast path packs the batch as a nested tensor: only the real
    tokens are multiplied."""
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 24, batch_first=True)
    model = nn.TransformerEncoder(layer, 2).eval()  # enable_nested_tensor (the default)
    x = torch.randn(3, 5, 16)
    pad = torch.tensor([[False] * 5, [False] * 3 + [True] * 2, [False] * 4 + [True]])
    counter, seen = _count(lambda: model(x, src_key_padding_mask=pad))
    assert "_nested_tensor_from_mask" in seen
    lengths = [5, 3, 4]
    per_layer = sum(encoder_hand_count(1, 1, n, 16, 24) for n in lengths)
    assert counter.total == 2 * per_layer


# -- grouped (MoE) products -----------------------------------------------------------------------
needs_grouped_mm = pytest.mark.skipif(
    not aten_ops("_grouped_mm"), reason=f"torch {torch.__version__} has no aten._grouped_mm"
)


class _MoE(nn.Module):
    """Top-1 experts on tokens already sorted by expert: an up and a down grouped product."""

    def __init__(self, d: int, hidden: int, experts: int) -> None:
        super().__init__()
        self.up = nn.Parameter(torch.randn(experts, d, hidden, dtype=torch.bfloat16))
        self.down = nn.Parameter(torch.randn(experts, hidden, d, dtype=torch.bfloat16))

    def forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        hidden = torch._grouped_mm(x, self.up, offs=offs)  # type: ignore[attr-defined]
        return torch._grouped_mm(torch.relu(hidden), self.down, offs=offs)  # type: ignore[attr-defined]


@needs_grouped_mm
def test_moe_grouped_mm_equals_the_hand_count() -> None:
    torch.manual_seed(0)
    model = _MoE(8, 16, 3)
    x, offs = torch.randn(16, 8, dtype=torch.bfloat16), torch.tensor([4, 8, 16], dtype=torch.int32)
    hand = 2 * 16 * 8 * 16 + 2 * 16 * 16 * 8  # every token meets one expert's up and down
    counter, _ = _count(lambda: model(x, offs))
    assert (counter.total, counter.uncounted) == (hand, {})
    assert _explained(model, x, offs) == hand
    assert _explained(model, x, offs, dry_run=True) == hand
    assert _explained(model, x, offs, dry_run=True, device="meta") == hand


@needs_grouped_mm
@pytest.mark.parametrize(
    ("a", "b", "hand"),
    [
        ((12, 8), (3, 8, 4), 2 * 12 * 8 * 4),  # ragged rows: each meets one group
        ((4, 12), (12, 4), 2 * 4 * 12 * 4),  # ragged contraction: each group its K slice
        ((3, 4, 8), (8, 12), 2 * 4 * 8 * 12),  # ragged columns: each group its N slice
        ((3, 4, 8), (3, 8, 4), 2 * 3 * 4 * 8 * 4),  # a batched product
    ],
    ids=["2d_3d", "2d_2d", "3d_2d", "3d_3d"],
)
def test_grouped_mm_layouts_equal_the_hand_count(
    a: tuple[int, ...], b: tuple[int, ...], hand: int
) -> None:
    offs = None if len(a) == len(b) == 3 else torch.tensor([4, 8, 12], dtype=torch.int32)
    counter, _ = _count(lambda: torch._grouped_mm(torch.randn(a), torch.randn(b), offs=offs))  # type: ignore[attr-defined]
    assert counter.total == hand
    scaled = aten_ops("_scaled_grouped_mm")
    for op in scaled:  # fp8 only, on GPUs: the same shapes, the same formula
        assert FORMULAS[op._overloadpacket] is FORMULAS[torch.ops.aten._grouped_mm]


# -- plain products the registry lacks ------------------------------------------------------------
A, B, V = torch.randn(4, 6), torch.randn(6, 5), torch.randn(6)
BA, BB = torch.randn(3, 4, 6), torch.randn(3, 6, 5)
I8 = torch.randint(-8, 8, (32, 32), dtype=torch.int8)
PRODUCTS: dict[str, tuple[Callable[[], Any], int]] = {
    "mv": (lambda: A @ V, 2 * 4 * 6),
    "dot": (lambda: V @ V, 2 * 6),
    "vdot": (lambda: torch.vdot(V, V), 2 * 6),
    "addmv": (lambda: torch.addmv(torch.zeros(4), A, V), 2 * 4 * 6),
    "addmm_": (lambda: torch.zeros(4, 5).addmm_(A, B), 2 * 4 * 6 * 5),
    "baddbmm_": (lambda: torch.zeros(3, 4, 5).baddbmm_(BA, BB), 2 * 3 * 4 * 6 * 5),
    "addbmm": (lambda: torch.addbmm(torch.zeros(4, 5), BA, BB), 2 * 3 * 4 * 6 * 5),
    "_int_mm": (lambda: torch._int_mm(I8, I8), 2 * 32 * 32 * 32),
    # (time 7, batch 2, channels 3) * kernel 3 -> 4 channels, out length 5 (no padding)
    "conv_tbc": (lambda: torch.conv_tbc(torch.randn(7, 2, 3), torch.randn(3, 3, 4), torch.randn(4)),
                 2 * 5 * 2 * 4 * 3 * 3),
}  # fmt: skip


@pytest.mark.parametrize("op", sorted(PRODUCTS))
def test_plain_products_the_registry_lacks_equal_the_hand_count(op: str) -> None:
    run, hand = PRODUCTS[op]
    counter, seen = _count(run)
    assert op in seen
    assert (counter.total, counter.uncounted) == (hand, {})


# -- the benchmark models -------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(flops_check.SMALL))
def test_benchmark_models_equal_their_hand_counts_real_dry_and_meta(name: str) -> None:
    model, inputs, hand = flops_check.SMALL[name]()  # in eval mode, or train where named
    with torch.no_grad(), FlopCounter() as counter:
        model(*inputs)
    assert (counter.total, counter.uncounted) == (hand, {})
    assert _explained(model, *inputs) == hand
    assert _explained(model, *inputs, dry_run=True) == hand
    assert _explained(model, *inputs, dry_run=True, device="meta") == hand


# -- what is not counted --------------------------------------------------------------------------
# the schema written out: this file's annotations are strings, which torch 2.4 cannot read
@torch.library.custom_op("shapecheck_test::fused_matmul", mutates_args=(),
                         schema="(Tensor a, Tensor b) -> Tensor")  # fmt: skip
def _fused_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a @ b


def test_an_op_that_does_work_without_a_formula_is_listed_as_uncounted() -> None:
    bilinear = nn.Bilinear(3, 4, 5)  # its kernel, _trilinear, has no formula
    with torch.no_grad(), FlopCounter() as counter:
        bilinear(torch.randn(2, 3), torch.randn(2, 4))
        _fused_matmul(A, B)
        _fused_matmul(A, B)
        torch.relu(A)  # no formula, no work by the convention: not listed
    assert counter.uncounted == {"_trilinear": 1, "shapecheck_test::fused_matmul": 2}
    text = lower_bound_text(counter.total, counter.uncounted)
    assert text.startswith("≥ ")
    assert "_trilinear (1 call), shapecheck_test::fused_matmul (2 calls)" in text


class _WithBilinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.bilinear = nn.Linear(3, 4), nn.Bilinear(4, 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.fc(x)
        out: torch.Tensor = self.bilinear(h, h)
        return out


def test_a_report_with_uncounted_work_shows_its_total_as_a_lower_bound() -> None:
    report = shapecheck.explain(_WithBilinear(), torch.randn(2, 3), flops=True)
    assert report.total_flops == 2 * 2 * 3 * 4  # the Linear alone
    assert report.flops_uncounted == {"_trilinear": 1}
    assert report.layer("bilinear").flops_uncounted == 1
    assert report.layer("fc").flops_uncounted == 0
    text = str(report)
    assert "flops      ≥ 48 FLOPs; not counted: _trilinear (1 call)" in text
    row = next(line for line in text.splitlines() if line.lstrip().startswith("bilinear"))
    assert "≥0" in row.split()  # the row's own figure is a floor too
    assert report.to_dict()["flops_uncounted"] == {"_trilinear": 1}
    exact = shapecheck.explain(nn.Linear(3, 4), torch.randn(2, 3), flops=True)
    assert exact.flops_uncounted == {}
    assert "flops      48 forward" in str(exact)


def test_the_work_rule_reads_the_words_of_the_op_name() -> None:
    work = ["mm", "_scaled_mm_v2", "hspmm", "addmv", "conv_tbc", "_conv_depthwise2d",
            "slow_conv_transpose3d", "_flash_attention_forward", "miopen_rnn", "_lstm_mps",
            "quantized_gru_cell", "quantized::linear", "torchvision::deform_conv2d",
            "_weight_int4pack_mm", "_trilinear"]  # fmt: skip
    not_work = ["relu", "add", "softmax", "native_layer_norm", "_cudnn_rnn_flatten_weight",
                "upsample_bilinear2d", "_convert_indices_from_coo_to_csr",
                "fbgemm_pack_gemm_matrix_fp16", "mkldnn_reorder_conv2d_weight",
                "_cslt_sparse_mm_search", "embedding", "cat", "torchvision::roi_align"]  # fmt: skip
    assert [n for n in work if not does_work(n)] == []
    assert [n for n in not_work if does_work(n)] == []


def test_zero_work_recurrent_kernels_have_a_zero_formula_not_an_uncounted_entry() -> None:
    for name in ("_thnn_fused_lstm_cell", "_thnn_fused_gru_cell"):
        assert does_work(name)
        (op,) = aten_ops(name)
        assert FORMULAS[op._overloadpacket]() == 0


@pytest.mark.parametrize(
    ("total", "uncounted", "text"),
    [
        (0, {}, "0 FLOPs"),
        (950, {}, "950 FLOPs"),
        (3_758_096_384, {}, "3.76 GFLOPs"),
        (10_485_760, {"mkldnn_rnn_layer": 2},
         "≥ 10.5 MFLOPs; not counted: mkldnn_rnn_layer (2 calls)"),
        (1_000, {"b": 1, "a": 3}, "≥ 1 KFLOPs; not counted: a (3 calls), b (1 call)"),
    ],
)  # fmt: skip
def test_lower_bound_text(total: int, uncounted: dict[str, int], text: str) -> None:
    assert lower_bound_text(total, uncounted) == text


@pytest.mark.parametrize("module", [_flops, _flop_formulas], ids=lambda m: m.__name__)
def test_docstring_examples(module: Any) -> None:
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0
    assert result.attempted > 0


# -- per-module attribution -----------------------------------------------------------------------
@pytest.fixture(scope="module", params=sorted(ZOO))
def built(request: pytest.FixtureRequest) -> tuple[nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return ZOO[request.param]()


def _oracle(model: nn.Module, inputs: tuple[Any, ...]) -> FlopCounterMode:
    with FlopCounterMode(display=False, custom_mapping=GAPS) as counter, torch.no_grad():
        model(*inputs)
    return counter


def _per_path(report: shapecheck.Report) -> dict[str, int]:
    """Module FLOPs summed over calls, named as FlopCounterMode names them (``Root.path``)."""
    sums: dict[str, int] = defaultdict(int)
    for layer in report.layers:
        if layer.kind == "module":
            assert layer.flops is not None
            name = report.model_type + (f".{layer.path}" if layer.path else "")
            sums[name] += layer.flops
    return dict(sums)


@pytest.mark.parametrize("dry_run", [False, True], ids=["real", "dry"])
def test_totals_and_per_module_flops_equal_flop_counter_mode_with_our_formulas(
    built: tuple[nn.Module, tuple[torch.Tensor, ...]], dry_run: bool
) -> None:
    model, inputs = built
    report = shapecheck.explain(model, *inputs, flops=True, dry_run=dry_run)
    oracle = _oracle(model, inputs)
    assert report.ok
    assert report.total_flops == oracle.get_total_flops()
    expected = {k: sum(v.values()) for k, v in oracle.get_flop_counts().items() if k != "Global"}
    counted = _per_path(report)
    assert {k: v for k, v in counted.items() if v} == expected
    assert report.layers[0].flops == report.total_flops  # the root includes everything


def test_flops_are_inclusive_of_children_and_functional_ops() -> None:
    model, inputs = zoo.resnet50(batch=2, size=32)
    report = shapecheck.explain(model, *inputs, flops=True)
    assert report.ok
    for layer in report.layers:
        children = [x for x in report.layers if x.parent == layer.index]
        if children and layer.type in {"Sequential", "ResNet"}:  # no ops of their own
            assert layer.flops == sum(x.flops or 0 for x in children), layer.path
    conv = report.layer("conv1")
    # 2 * (out elements) * (in channels * kernel area): conv1 maps 3 -> 64 channels, 7x7, 16x16 out
    assert conv.flops == 2 * 2 * 64 * 16 * 16 * 3 * 7 * 7


def test_the_lstm_row_holds_the_lstm_flops() -> None:
    model, inputs = zoo.lstm(batch=2, seq=8)
    report = shapecheck.explain(model, *inputs, flops=True)
    # 16 tokens; 2 layers 256 -> 512: w_ih 2048x256 and w_hh 2048x512, then 2048x512 twice
    assert report.layer("lstm").flops == 2 * 16 * (2048 * 768 + 2048 * 1024)
    assert report.layer("head").flops == 2 * 16 * 512 * 20


def test_functional_ops_get_their_own_flops() -> None:
    class Functional(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = nn.Parameter(torch.randn(6, 4))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(x @ self.weight).sum(dim=1)

    report = shapecheck.explain(Functional(), torch.randn(3, 6), flops=True)
    matmul = next(x for x in report.layers if x.kind == "function" and x.flops)
    assert matmul.flops == 2 * 3 * 6 * 4
    assert report.total_flops == matmul.flops


def test_without_flops_nothing_is_counted_and_the_table_has_no_flops_column() -> None:
    model, inputs = zoo.seed_cnn()
    plain = shapecheck.explain(model, *inputs)
    counted = shapecheck.explain(model, *inputs, flops=True)
    assert plain.total_flops is None
    assert all(x.flops is None for x in plain.layers)
    assert "FLOPs" not in str(plain).splitlines()[1]
    assert "FLOPs" in str(counted).splitlines()[1]
    assert max(len(line) for line in str(counted).splitlines()) <= 100
    assert counted.to_dict()["total_flops"] == counted.total_flops
    assert counted.to_dict()["layers"][1]["flops"] == counted.layers[1].flops


def test_a_failing_forward_keeps_the_flops_counted_before_it() -> None:
    model = nn.Sequential(nn.Linear(8, 4), nn.Linear(5, 2))
    report = shapecheck.explain(model, torch.randn(2, 8), flops=True)
    assert not report.ok
    assert report.layer("0").flops == 2 * 2 * 8 * 4
    assert report.total_flops == 2 * 2 * 8 * 4


def test_flop_counter_matches_flop_counter_mode_on_attention_on_meta() -> None:
    # On meta tensors SDPA runs its math decomposition, whose matmuls have formulas.
    q = torch.empty(2, 4, 32, 16, device="meta")
    with FlopCounter() as ours:
        nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    with FlopCounterMode(display=False) as theirs:
        nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    assert ours.total == theirs.get_total_flops() > 0
