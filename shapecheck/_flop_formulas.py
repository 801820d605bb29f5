"""FLOP formulas for the kernels torch's registry has none for, and the rule for what is work.

``torch.utils.flop_counter`` counts matmuls, convolutions and the CUDA attention kernels. The
kernels CPU really runs are missing from it: SDPA's CPU flash kernel, oneDNN's LSTM layer, the
fused inference paths of ``nn.MultiheadAttention`` and ``nn.TransformerEncoderLayer``; so are
the cuDNN/MIOpen RNNs, grouped (MoE) matmuls and a few plain products (``mv``, ``dot``,
``addmm_``, ``conv_tbc``, ...). :data:`FORMULAS` fills those gaps for shapecheck's counter only;
torch's global registry is never touched.

The convention is torch's: forward only; a multiply-add is 2 FLOPs, so an (m, k) @ (k, n)
product is 2*m*k*n; only contractions count, so bias additions, softmax, activations, norms and
the elementwise gate math of recurrent cells are 0. A mask, causal or given, does not lower the
count (torch's own SDPA formula counts the whole score matrix too): the fused CPU kernel and the
math decomposition the same call becomes on ``meta`` then agree.

A formula takes the op's arguments as the op got them (tensors, or their shapes when torch's
``FlopCounterMode`` calls it through its shape wrapper) and the output as ``out_val``; it
returns an int. ``FlopCounterMode(custom_mapping=FORMULAS)`` accepts the table as it is.
Ops that a torch release lacks are left out (:func:`shapecheck._compat.aten_ops`).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable
from typing import Any

import torch

from ._compat import aten_ops

__all__ = ["FORMULAS", "does_work", "op_name"]

Formula = Callable[..., int]

#: op packet -> formula, for the ops this torch has.
FORMULAS: dict[Any, Formula] = {}


def _formula(*names: str) -> Callable[[Formula], Formula]:
    """Register the decorated formula for the named aten ops (``"mv"``) that this torch has."""

    def register(formula: Formula) -> Formula:
        formula._get_raw = True  # type: ignore[attr-defined]  # FlopCounterMode: pass tensors
        for op in aten_ops(*names):
            FORMULAS[op._overloadpacket] = formula
        return formula

    return register


def _dims(x: Any) -> tuple[int, ...]:
    """A tensor's shape, or the shape itself (FlopCounterMode's wrapper passes shapes)."""
    return tuple(x.shape) if isinstance(x, torch.Tensor) else tuple(x)


def _numel(x: Any) -> int:
    return math.prod(_dims(x))


def _sequences(x: Any) -> list[int]:
    """The sequence lengths of a (batch, seq, embed) input: a nested tensor's own lengths."""
    if isinstance(x, torch.Tensor) and x.is_nested:  # the encoder fast path packs padded input
        return [int(n) for n in x._nested_tensor_size()[:, 0].tolist()]
    dims = _dims(x)
    return [dims[-2]] * math.prod(dims[:-2])


# -- plain products the registry lacks (it has mm, addmm, bmm, baddbmm) ---------------------------
@_formula("mv", "dot", "vdot")
def _vector_product(a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # (m, k) @ (k,) and (k,) . (k,): each element of `a` meets one of `b`: 2*m*k and 2*k
    return 2 * _numel(a)


@_formula("addmv", "addmv_")
def _addmv(bias: Any, mat: Any, vec: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # bias + (m, k) @ (k,): 2*m*k, the bias addition not counted
    return 2 * _numel(mat)


@_formula("_int_mm")
def _int_mm(a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # int8 (m, k) @ (k, n): 2*m*k*n
    return 2 * _numel(a) * _dims(b)[-1]


@_formula("addmm_", "baddbmm_", "addbmm", "addbmm_")
def _add_product(bias: Any, a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # bias + (m, k) @ (k, n): 2*m*k*n; batched (g, m, k) @ (g, k, n), kept per batch (baddbmm_)
    # or summed over it (addbmm): 2*g*m*k*n. The bias addition is not counted.
    return 2 * _numel(a) * _dims(b)[-1]


@_formula("conv_tbc")
def _conv_tbc(
    x: Any, weight: Any, bias: Any, pad: int = 0, *args: Any, out_val: Any = None, **kwargs: Any
) -> int:
    # time-batch-channel 1-D convolution: x (t, batch, c_in), weight (kernel, c_in, c_out);
    # each of t_out * batch * c_out outputs is kernel * c_in multiply-adds
    t, batch, c_in = _dims(x)
    kernel, _, c_out = _dims(weight)
    return 2 * (t + 2 * pad - kernel + 1) * batch * c_out * kernel * c_in


# -- attention ------------------------------------------------------------------------------------
@_formula(
    "_scaled_dot_product_flash_attention_for_cpu", "_scaled_dot_product_efficient_attention",
    "_scaled_dot_product_flash_attention", "_scaled_dot_product_cudnn_attention",
    "_scaled_dot_product_fused_attention_overrideable",
)  # fmt: skip
def _sdpa(query: Any, key: Any, value: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # query (..., heads, s_q, d), key (..., kv_heads, s_k, d), value (..., kv_heads, s_k, d_v).
    # Per query head: scores q @ k^T 2*s_q*s_k*d, then scores @ v 2*s_q*s_k*d_v. Grouped-query
    # attention shares k/v heads among query heads, which costs as if they were repeated.
    q, v = _dims(query), _dims(value)
    s_q, d = q[-2:]
    s_k, d_v = v[-2:]
    return 2 * math.prod(q[:-2]) * s_q * s_k * (d + d_v)


def _attention(embed: int, queries: list[int], keys: list[int]) -> int:
    """Scores and weighted values over all heads: 2*l_q*l_k*E each, per sequence pair."""
    return 4 * embed * sum(l_q * l_k for l_q, l_k in zip(queries, keys, strict=True))


@_formula("_native_multi_head_attention")
def _native_mha(
    query: Any, key: Any, value: Any, embed: int, heads: int, *args: Any,
    out_val: Any = None, **kwargs: Any,
) -> int:  # fmt: skip
    # nn.MultiheadAttention's fused inference path. Query, key and value tokens are each
    # projected by their third (E, E) of qkv_weight: 2*E*E per token; attention as in SDPA;
    # the output projection (E, E): 2*E*E per query token. need_weights changes nothing here.
    queries, keys, values = _sequences(query), _sequences(key), _sequences(value)
    projected = sum(queries) + sum(keys) + sum(values) + sum(queries)
    return 2 * embed * embed * projected + _attention(embed, queries, keys)


@_formula("_transformer_encoder_layer_fwd")
def _encoder_layer(
    src: Any, embed: int, heads: int, qkv_weight: Any, qkv_bias: Any, proj_weight: Any,
    proj_bias: Any, use_gelu: bool, norm_first: bool, eps: float, norm_weight_1: Any,
    norm_bias_1: Any, norm_weight_2: Any, norm_bias_2: Any, ffn_weight_1: Any, ffn_bias_1: Any,
    ffn_weight_2: Any, *args: Any, out_val: Any = None, **kwargs: Any,
) -> int:  # fmt: skip
    # nn.TransformerEncoderLayer's fused inference path (self-attention, q = k = v). Every
    # token meets the qkv projection (3E, E), the output projection (E, E) and the two
    # feed-forward linears (F, E) and (E, F) once: 2 * (their elements) per token. A sequence
    # of length L adds attention 4*L*L*E. Norms, activation and residuals are not counted.
    lengths = _sequences(src)
    weights = sum(_numel(w) for w in (qkv_weight, proj_weight, ffn_weight_1, ffn_weight_2))
    return 2 * weights * sum(lengths) + _attention(embed, lengths, lengths)


# -- recurrent ------------------------------------------------------------------------------------
def _recurrent(x: Any, weights: Iterable[Any]) -> int:
    """2 * tokens * (elements of every weight matrix): each token of a layer and direction
    multiplies its input by w_ih (G*H, In), the previous hidden state by w_hh (G*H, H) and,
    with ``proj_size``, the new one by w_hr (P, H). G = 4 gates (LSTM), 3 (GRU), 1 (RNN)."""
    tokens = _numel(x) // _dims(x)[-1]  # (seq, batch, in), (batch, seq, in) or packed (sum, in)
    return 2 * tokens * sum(_numel(w) for w in weights if len(_dims(w)) == 2)


@_formula("mkldnn_rnn_layer")
def _mkldnn_rnn_layer(
    x: Any, weight_ih: Any, weight_hh: Any, *args: Any, out_val: Any = None, **kwargs: Any
) -> int:
    # oneDNN's LSTM on CPU: one call per layer and direction (biases are args 3 and 4)
    return _recurrent(x, (weight_ih, weight_hh))


@_formula("_cudnn_rnn", "miopen_rnn")
def _fused_rnn(x: Any, weights: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # cuDNN / MIOpen: one call for all layers and directions; `weights` lists each one's
    # w_ih, w_hh [, b_ih, b_hh] [, w_hr]. Deeper layers' inputs are wider (w_ih is wider too).
    return _recurrent(x, weights)


@_formula("_thnn_fused_lstm_cell", "_thnn_fused_gru_cell")
def _fused_cell(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # CUDA's cell without cuDNN gets the gates already multiplied (mm ops, counted there):
    # what is left is elementwise
    return 0


# -- grouped (MoE) products -----------------------------------------------------------------------
@_formula("_grouped_mm", "_scaled_grouped_mm")
def _grouped_mm(a: Any, b: Any, *args: Any, out_val: Any = None, **kwargs: Any) -> int:
    # Groups of (m, k) @ (k, n); `offs` splits the ragged dim among them. Every row of it is
    # counted as routed (offs[-1] = its size, as MoE layers build it): offs are values, which
    # a dry run cannot read.
    #   a (M, K)    @ b (G, K, N): each row meets one group's matrix     2*M*K*N
    #   a (M, K)    @ b (K, N):    each group contracts its slice of K   2*M*K*N
    #   a (G, M, K) @ b (G, K, N): a batched product                     2*G*M*K*N
    #   a (G, M, K) @ b (K, N):    group g makes its slice of N columns  2*M*K*N
    dims_a, dims_b = _dims(a), _dims(b)
    rows = dims_a[1:] if len(dims_a) == 3 and len(dims_b) == 2 else dims_a
    return 2 * math.prod(rows) * dims_b[-1]


# -- what counts as work --------------------------------------------------------------------------
#: Words of an op's name that mark the families torch's convention counts: products,
#: convolutions, attention and recurrent layers. Any word ending in "mm" is a product too.
_WORK = frozenset({
    "mv", "addmv", "dot", "vdot", "matmul", "linear", "bilinear", "trilinear", "einsum",
    "tensordot", "conv", "conv1d", "conv2d", "conv3d", "convolution", "attention", "attn",
    "rnn", "lstm", "gru",
})  # fmt: skip
#: Words that mark an op of such a family that moves or prepares data instead.
_NOT_WORK = frozenset({
    "convert", "flatten", "pack", "prepack", "quantize", "reorder", "search", "upsample",
})  # fmt: skip


def op_name(packet: Any) -> str:
    """``mkldnn_rnn_layer`` for an aten op, ``mylib::fused_attention`` for any other."""
    name: str = packet._qualified_op_name
    return name.removeprefix("aten::")


@functools.cache
def does_work(name: str) -> bool:
    """True for an op of a family that costs FLOPs by the convention (products, convolutions,
    attention, recurrent layers), told by the words of its name.

    The rule for an op that has no formula: run and not decomposed, such an op leaves the total a
    lower bound. Elementwise ops, reductions, norms and data movement are 0 by the convention,
    so their missing formulas cost nothing.

    Example:
        >>> does_work("mkldnn_rnn_layer"), does_work("mylib::fused_attention")
        (True, True)
        >>> does_work("_cudnn_rnn_flatten_weight"), does_work("upsample_bilinear2d")
        (False, False)
    """
    words = set(name.rpartition("::")[2].split("_"))
    work = bool(words & _WORK) or any(word.endswith("mm") for word in words)
    return work and not words & _NOT_WORK
