"""Hugging Face ``transformers`` models, built from tiny configs (nothing is downloaded), as
oracles nobody here wrote: encoders, decoders, encoder-decoders, vision and audio models.

For each: shapecheck's rows equal what plain hooks record of a real forward (every module
call, in order, with its output shapes), the parameter totals are exact with tied weights, the
model is left exactly as it was, a dry run records the same shapes, and not one warning fires
on these healthy models. Needs the ``zoo`` extra (``pip install -e '.[zoo]'``).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn
from zoo import capture, unique_params

import shapecheck

transformers = pytest.importorskip("transformers")
logging.getLogger("transformers").setLevel(logging.ERROR)  # config notes about token ids

_TEXT = dict(
    vocab_size=99,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    max_position_embeddings=64,
)
_SEQ2SEQ = dict(
    vocab_size=99,
    d_model=32,
    encoder_layers=1,
    decoder_layers=1,
    encoder_attention_heads=2,
    decoder_attention_heads=2,
    encoder_ffn_dim=37,
    decoder_ffn_dim=37,
    max_position_embeddings=64,
)
_T5 = dict(vocab_size=99, d_model=32, d_kv=16, d_ff=37, num_layers=2, num_heads=2)
_VIT = dict(
    image_size=32,
    patch_size=8,
    num_channels=3,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
)
_SWIN = dict(
    image_size=32,
    patch_size=4,
    num_channels=3,
    embed_dim=16,
    depths=[1, 1],
    num_heads=[2, 2],
    window_size=4,
)
_WAV2VEC = dict(
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    intermediate_size=37,
    conv_dim=(8, 8),
    conv_stride=(5, 2),
    conv_kernel=(10, 3),
    num_conv_pos_embeddings=4,
    num_conv_pos_embedding_groups=2,
)
_GQA = dict(_TEXT, num_key_value_heads=1)

#: model type -> (config keywords, the kind of input it takes)
ARCHITECTURES: dict[str, tuple[dict[str, Any], str]] = {
    # encoders
    "bert": (_TEXT, "text"),
    "roberta": (_TEXT, "text"),
    "albert": (dict(_TEXT, embedding_size=16), "text"),
    "electra": (dict(_TEXT, embedding_size=16), "text"),
    "deberta-v2": (_TEXT, "text"),
    "distilbert": (dict(vocab_size=99, dim=32, n_layers=2, n_heads=2, hidden_dim=37), "text"),
    "mpnet": (_TEXT, "text"),
    "convbert": (dict(_TEXT, embedding_size=32), "text"),
    "megatron-bert": (_TEXT, "text"),
    # decoders
    "gpt2": (dict(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64), "text"),
    "gptj": (
        dict(vocab_size=99, n_embd=32, n_layer=2, n_head=2, n_positions=64, rotary_dim=8),
        "text",
    ),
    "opt": (dict(_TEXT, ffn_dim=37, word_embed_proj_dim=32), "text"),
    "bloom": (dict(vocab_size=99, hidden_size=32, n_layer=2, n_head=2), "text"),
    "llama": (_GQA, "text"),
    "mistral": (_GQA, "text"),
    "qwen2": (_GQA, "text"),
    "phi": (_TEXT, "text"),
    "falcon": (
        dict(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=2),
        "text",
    ),
    "gemma": (dict(_GQA, head_dim=16), "text"),
    "gpt_neox": (_TEXT, "text"),
    "biogpt": (_TEXT, "text"),
    "starcoder2": (_GQA, "text"),
    # encoder-decoders
    "t5": (_T5, "seq2seq"),
    "bart": (_SEQ2SEQ, "seq2seq"),
    "mbart": (_SEQ2SEQ, "seq2seq"),
    "pegasus": (_SEQ2SEQ, "seq2seq"),
    "blenderbot": (_SEQ2SEQ, "seq2seq"),
    # vision
    "vit": (_VIT, "image"),
    "deit": (_VIT, "image"),
    "beit": (_VIT, "image"),
    "dinov2": (_VIT, "image"),
    "swin": (_SWIN, "image"),
    "swinv2": (_SWIN, "image"),
    "resnet": (
        dict(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1]),
        "image",
    ),
    "segformer": (
        dict(
            num_channels=3,
            num_encoder_blocks=2,
            depths=[1, 1],
            sr_ratios=[2, 1],
            hidden_sizes=[8, 16],
            num_attention_heads=[1, 2],
            mlp_ratios=[2, 2],
            patch_sizes=[7, 3],
            strides=[4, 2],
        ),
        "image",
    ),
    # audio
    "wav2vec2": (_WAV2VEC, "audio"),
    "hubert": (_WAV2VEC, "audio"),
}

_INPUTS: dict[str, Callable[[torch.Generator], dict[str, torch.Tensor]]] = {
    "text": lambda g: {"input_ids": torch.randint(1, 99, (2, 7), generator=g)},
    "seq2seq": lambda g: {
        "input_ids": torch.randint(1, 99, (2, 7), generator=g),
        "decoder_input_ids": torch.randint(1, 99, (2, 5), generator=g),
    },
    "image": lambda g: {"pixel_values": torch.randn(2, 3, 32, 32, generator=g)},
    "audio": lambda g: {"input_values": torch.randn(2, 400, generator=g)},
}


def _build(name: str) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    kwargs, kind = ARCHITECTURES[name]
    config = transformers.AutoConfig.for_model(name, **kwargs)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = transformers.AutoModel.from_config(config).eval()
    return model, _INPUTS[kind](torch.Generator().manual_seed(0))


def _rows(report: shapecheck.Report) -> list[tuple[str, list[tuple[int, ...]]]]:
    return [(row.path, row.output_shapes) for row in report.layers if row.kind == "module"]


def test_the_zoo_covers_every_kind_with_30_architectures() -> None:
    kinds = {kind for _, kind in ARCHITECTURES.values()}
    assert len(ARCHITECTURES) >= 30
    assert kinds == set(_INPUTS)


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_explain_agrees_with_a_plain_forward(name: str) -> None:
    model, inputs = _build(name)
    state = copy.deepcopy(model.state_dict())
    flags = [m.training for m in model.modules()]
    rng = torch.get_rng_state()
    seen = capture(model, **inputs)
    assert seen.error is None, seen.error
    report = shapecheck.explain(model, **inputs)
    assert report.ok, report.failure
    assert _rows(report) == [(path or "", shapes) for path, shapes in seen.calls]
    assert report.total_params == unique_params(model)
    assert report.warnings == [], [w.message for w in report.warnings]
    dry = shapecheck.explain(model, **inputs, dry_run=True)
    assert dry.ok, dry.failure
    assert _rows(dry) == _rows(report)
    assert dry.warnings == [], [w.message for w in dry.warnings]
    now = model.state_dict()  # nothing changed: weights, buffers, flags, the RNG
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert [m.training for m in model.modules()] == flags
    assert torch.equal(torch.get_rng_state(), rng)
