"""Input-size contracts (issue 14): formulas per layer, the sizes a model accepts, pins.

Expected values are written here from the architecture (conv arithmetic, the book's own view),
and checked against real forward passes run under tests/zoo.py's own hooks, never against
shapecheck. Golden files: tests/golden/contract/ (SHAPECHECK_UPDATE_GOLDEN=1 rewrites them).
"""

from __future__ import annotations

import ast
import doctest
import functools
import itertools
import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from zoo import BookNet, capture

import shapecheck
import shapecheck._compat
from shapecheck import UsageError
from shapecheck._contract import accepted_sizes_hint
from shapecheck._symbolic import MINIMUM
from shapecheck.demo import seed_model, seed_model_fixed

GOLDEN = Path(__file__).parent / "golden" / "contract"
UPDATE = os.environ.get("SHAPECHECK_UPDATE_GOLDEN") == "1"
_THIS = sys.modules[__name__]


@pytest.fixture(scope="module", autouse=True)
def _torch_and_the_module_name() -> Iterator[None]:
    """Skip on a torch older than contracts need; and once this module is done, free its name:
    tests/test_plugin.py's inner sessions write a test_contract.py of their own, and importing
    it would clash with this module still in ``sys.modules``."""
    try:
        if not shapecheck._compat.torch_at_least(MINIMUM):
            pytest.skip(f"contracts need torch >= {MINIMUM}")
        yield
    finally:
        if sys.modules.get(__name__) is _THIS:
            del sys.modules[__name__]


# -- the models (the book's Net, with its out.view(-1, 8 * 8 * 8), is tests/zoo.py's BookNet) --
class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, mid, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(mid)
        self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(mid)
        self.conv3 = nn.Conv2d(mid, 4 * mid, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(4 * mid)
        self.down = nn.Sequential(nn.Conv2d(cin, 4 * mid, 1, stride, bias=False),
                                  nn.BatchNorm2d(4 * mid))  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = F.relu(self.bn2(self.conv2(out)))
        return F.relu(self.bn3(self.conv3(out)) + self.down(x))


class ResNetish(nn.Module):
    """A stem without padding (so a minimum size), two bottlenecks, adaptive pooling."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 7, stride=2, bias=False), nn.BatchNorm2d(8),
                                  nn.ReLU(), nn.MaxPool2d(3, 2, 1))  # fmt: skip
        self.layer1 = Bottleneck(8, 4, 1)
        self.layer2 = Bottleneck(16, 8, 2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(32, 1000)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(torch.flatten(self.pool(x), 1))


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU())


class UNet(nn.Module):
    """Four poolings down, four transposed convs up, each concatenated with its skip."""

    def __init__(self) -> None:
        super().__init__()
        widths = [1, 2, 2, 2, 2, 2]
        self.down = nn.ModuleList(_block(a, b) for a, b in itertools.pairwise(widths))
        self.pool = nn.MaxPool2d(2)
        self.up = nn.ModuleList(nn.ConvTranspose2d(2, 2, 2, stride=2) for _ in range(4))
        self.merge = nn.ModuleList(_block(4, 2) for _ in range(4))
        self.out = nn.Conv2d(2, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for index, block in enumerate(self.down):
            x = block(x if index == 0 else self.pool(x))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = merge(torch.cat([up(x), skip], dim=1))
        return self.out(x)


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 12)
        self.lstm = nn.LSTM(12, 16, batch_first=True, bidirectional=True)
        self.out = nn.Linear(32, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden, _ = self.lstm(self.embed(tokens))
        return self.out(hidden)


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (part.view(b, t, self.heads, c // self.heads).transpose(1, 2)
                   for part in self.qkv(x).split(c, dim=2))  # fmt: skip
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class GPT(nn.Module):
    """A two-block decoder; the learned positions cover 24 tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(40, 16)
        self.positions = nn.Parameter(torch.zeros(24, 16))
        self.blocks = nn.ModuleList(Attention(16, 2) for _ in range(2))
        self.norm = nn.LayerNorm(16)
        self.head = nn.Linear(16, 40, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tokens(idx) + self.positions[: idx.shape[1]]
        for block in self.blocks:
            x = x + block(x)
        return self.head(self.norm(x))


class ReadsWidth(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(64, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = int(x.shape[3])  # PIN-LINE
        y = self.conv(x).mean(2).reshape(-1, 4 * width)
        return self.fc(y[:, :64])


class Masked(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pixels = x.permute(0, 2, 3, 1)
        return self.fc(pixels[pixels.sum(-1) > 0])  # MASK-LINE


class Counted(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        n = int((y > 0).sum().item()) % 3 + 1  # ITEM-LINE
        return y.mean((2, 3))[:, :n]


def _line(marker: str) -> int:
    lines = Path(__file__).read_text(encoding="utf-8").splitlines()
    return next(i for i, text in enumerate(lines, 1) if text.endswith(f"# {marker}"))


def _image(*shape: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(0))


def _tokens(*shape: int, vocab: int) -> torch.Tensor:
    return torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(0))


CASES = {
    "seed": lambda: (seed_model_fixed(), "B 3 H W", _image(4, 3, 32, 32)),
    "book_net": lambda: (BookNet(), "B 3 H W", _image(4, 3, 32, 32)),
    "resnet": lambda: (ResNetish().eval(), "B 3 H W", _image(2, 3, 64, 64)),
    "unet": lambda: (UNet(), "B 1 H W", _image(2, 1, 32, 48)),
    "tagger": lambda: (Tagger(), "B T", _tokens(3, 7, vocab=50)),
    "gpt": lambda: (GPT(), "B T", _tokens(3, 10, vocab=40)),
    "reads_width": lambda: (ReadsWidth(), "B 3 H W", _image(2, 3, 8, 16)),
}


@functools.cache
def _case(name: str) -> tuple[nn.Module, shapecheck.Contract]:
    model, spec, example = CASES[name]()
    return model, shapecheck.contract(model, spec, example=example)


def _layer(c: shapecheck.Contract, path: str) -> tuple[str | int, ...]:
    return next(x.output for x in c.layers if x.path == path and x.kind == "module")


# -- the chapter-8 CNN ----------------------------------------------------------------------------
def test_the_cnn_with_flatten_maps_any_batch_to_two_logits_at_32_to_35_pixels():
    _, c = _case("seed")
    assert c.output == ("B", 2)
    assert _layer(c, "0") == ("B", 16, "H", "W")
    assert _layer(c, "5") == ("B", 8, "H//4", "W//4")
    assert c.constraints == ["(H//4)*(W//4) == 64"]
    assert c.accepts(H=32, W=32)
    assert c.accepts(H=35, W=35)
    assert not c.accepts(H=36, W=36)
    rejected = c.accepts(H=64, W=64)
    assert not rejected
    assert rejected.why.startswith("layer '7' (Linear) needs (H//4)*(W//4) == 64; here 256")
    sizes = c.sizes("H", W=32)
    assert list(sizes) == [32, 33, 34, 35]
    assert str(sizes) == "32..35"
    assert c.keeps_batch
    assert c.accepts(B=1)
    assert c.accepts(B=57)


def test_accepts_agrees_with_the_real_forward_at_the_sizes_the_brief_names():
    model, c = _case("seed")
    for h, w in [(32, 32), (35, 35), (36, 36), (64, 64), (33, 34)]:
        runs = capture(model, _image(2, 3, h, w)).error is None
        assert bool(c.accepts(B=2, H=h, W=w)) == runs, (h, w)


# -- the book's Net: view(-1, 8 * 8 * 8) -----------------------------------------------------------
def test_the_books_view_does_not_keep_the_batch_and_says_where():
    model, c = _case("book_net")
    rows = "(B*(H//4)*(W//4))//64"
    assert c.output == (rows, 2)
    keeps = c.keeps_batch
    assert not keeps
    assert "view" in keeps.why
    assert "out = out.view(-1, 8 * 8 * 8)" in keeps.why
    assert f"turns B rows into {rows}" in keeps.why
    assert c.accepts(H=64, W=64).why.endswith("output (16, 2)")
    assert capture(model, _image(4, 3, 64, 64)).calls[-1][1] == [(16, 2)]
    assert "(B*(H//4)*(W//4)) % 64 == 0" in c.constraints


def test_the_coincidence_at_the_example_is_not_taken_for_the_rule():
    """At 32x32 the view happens to give B rows; the contract must not say the batch is kept."""
    _, c = _case("book_net")
    assert c.accepts(H=32, W=64).why.endswith("output (8, 2)")
    assert not c.accepts(H=36, W=36)  # 4*9*9 rows of 512 is not whole


# -- more architectures ----------------------------------------------------------------------------
def test_a_resnet_with_adaptive_pooling_only_needs_a_minimum_size():
    _, c = _case("resnet")
    assert c.output == ("B", 1000)
    assert c.constraints == ["H >= 7", "W >= 7"]
    assert str(c.sizes("H")) == "H >= 7"
    assert not c.accepts(H=6)
    assert c.accepts(H=7, W=300)
    assert c.keeps_batch


def test_a_unet_with_skip_concatenation_needs_sizes_divisible_by_16():
    _, c = _case("unet")
    assert c.output == ("B", 1, "H", "W")
    assert c.constraints == ["H % 16 == 0", "W % 16 == 0"]
    assert str(c.sizes("H")) == "H >= 16 and H % 16 == 0"
    rejected = c.accepts(H=40)
    assert not rejected
    assert "cat" in rejected.why


def test_an_lstm_tagger_keeps_batch_and_time_symbolic():
    _, c = _case("tagger")
    assert c.output == ("B", "T", 5)
    lstm = next(x for x in c.layers if x.path == "lstm")
    assert lstm.outputs == (("B", "T", 32), (2, "B", 16), (2, "B", 16))
    assert not c.pinned
    assert c.accepts(B=1, T=300)
    assert c.keeps_batch


def test_a_gpt_decoder_is_symbolic_in_time_up_to_its_positions():
    _, c = _case("gpt")
    assert c.output == ("B", "T", 40)
    assert _layer(c, "blocks.0.qkv") == ("B", "T", 48)
    assert c.constraints == ["T <= 24"]
    assert str(c.sizes("T")) == "1..24"
    assert not c.accepts(T=25)


# -- pins: what the trace can only follow at the example's size ------------------------------------
def test_int_of_a_size_pins_that_symbol_and_names_the_line():
    _, c = _case("reads_width")
    (pin,) = c.pinned
    assert (pin.symbol, pin.value) == ("W", 16)
    assert pin.line == f"{__file__}:{_line('PIN-LINE')}"
    assert "W == 16" in c.constraints
    assert f"test_contract.py:{_line('PIN-LINE')} (width = int(x.shape[3])" in str(c)
    assert _layer(c, "conv") == ("B", 4, "H", 16)
    assert c.accepts(H=30)  # H stays a symbol


def test_a_mask_keeps_concrete_sizes_and_pins_what_it_reads():
    model = Masked()
    x = _image(2, 3, 8, 6)
    c = shapecheck.contract(model, "B 3 H W", example=x)
    kept = int((x.permute(0, 2, 3, 1).sum(-1) > 0).sum())
    assert c.output == (kept, 2)
    assert {p.symbol for p in c.pinned} == {"B", "H", "W"}
    assert all(p.line == f"{__file__}:{_line('MASK-LINE')}" for p in c.pinned)
    assert "depend on the data" in c.pinned[0].reason
    assert not c.keeps_batch


def test_item_pins_the_symbols_its_value_was_computed_from():
    c = shapecheck.contract(Counted(), "B 3 H W", example=_image(2, 3, 8, 6))
    assert {p.symbol for p in c.pinned} == {"B", "H", "W"}
    assert c.pinned[0].line == f"{__file__}:{_line('ITEM-LINE')}"
    assert "value read from the data" in c.pinned[0].reason


def test_the_model_is_left_as_it_was():
    model = ResNetish()  # training mode: BatchNorm counts batches, even on fake tensors
    counted, image = Counted(), _image(2, 3, 8, 6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    rng = torch.get_rng_state()
    c = shapecheck.contract(model, "B 3 H W", example=(2, 3, 40, 40))
    assert c.accepts(H=20)
    assert not c.accepts(B=1, H=7, W=7)  # BatchNorm in training wants more than one value
    shapecheck.contract(counted, "B 3 H W", example=image)  # a real run, for .item()
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(rng, torch.get_rng_state())
    assert all(m.training for m in model.modules())
    for module in model.modules():
        assert "forward" not in vars(module)
        assert not module._forward_hooks
        assert not module._forward_pre_hooks


# -- against real forward passes -------------------------------------------------------------------
#: sizes each model is likely to accept, so that both outcomes are drawn (never an expectation)
LIKELY = {"seed": range(30, 38), "book_net": range(4, 70, 4), "resnet": range(5, 70),
          "unet": range(16, 70, 16)}  # fmt: skip


@settings(max_examples=20)
@given(data=st.data())
def test_formulas_equal_real_shapes_where_accepted_and_the_forward_fails_elsewhere(data):
    name = data.draw(st.sampled_from(list(LIKELY)), label="model")
    model, c = _case(name)
    b = data.draw(st.integers(1, 5), label="B")
    h, w = (data.draw(st.one_of(st.sampled_from(LIKELY[name]), st.integers(2, 70)), label=n)
            for n in ("H", "W"))  # fmt: skip
    verdict = c.accepts(B=b, H=h, W=w)
    assert "not decided" not in verdict.why
    channels = 1 if name == "unet" else 3
    seen = capture(model, _image(b, channels, h, w))
    assert bool(verdict) == (seen.error is None), verdict.why
    if verdict:
        expected = c.shapes(B=b, H=h, W=w)
        real = {}
        for path, shapes in seen.calls:
            real.setdefault(path, tuple(shapes))
        assert {p: real[p] for p in expected if p} == {p: s for p, s in expected.items() if p}
        assert expected[""] == tuple(real[""])


@settings(max_examples=12)
@given(name=st.sampled_from(["tagger", "gpt"]), b=st.integers(1, 4), t=st.integers(1, 30))
def test_sequence_models_match_real_forwards_at_any_length(name: str, b: int, t: int):
    model, c = _case(name)
    verdict = c.accepts(B=b, T=t)
    seen = capture(model, _tokens(b, t, vocab=40))
    assert bool(verdict) == (seen.error is None), verdict.why
    if verdict:
        expected = c.shapes(B=b, T=t)
        real = dict(reversed(seen.calls))  # the first call of each path
        assert expected == {p: tuple(real[p]) for p in expected}


# -- rendered contracts ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CASES))
def test_golden(name: str):
    text = str(_case(name)[1])
    path = GOLDEN / f"{name}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n", encoding="utf-8")
        return
    assert path.exists(), f"{path} is missing: run with SHAPECHECK_UPDATE_GOLDEN=1 to create it"
    expected = path.read_text(encoding="utf-8").removesuffix("\n")
    assert text == expected, f"rendering differs from {path.name} (update it on purpose only)"


def test_to_dict_is_json_and_carries_the_formulas():
    data = json.loads(json.dumps(_case("book_net")[1].to_dict()))
    assert data["outputs"] == [["(B*(H//4)*(W//4))//64", 2]]
    assert data["keeps_batch"]["ok"] is False
    conv1 = {"path": "conv1", "kind": "module", "type": "Conv2d", "depth": 1,
             "outputs": [["B", 16, "H", "W"]], "line": None}  # fmt: skip
    assert data["layers"][1] == conv1


# -- misuse and the torch it needs -----------------------------------------------------------------
@pytest.mark.parametrize(
    ("example", "message"),
    [
        ((1, 3, 32, 32), "B=1: a symbol's example size must be >= 2"),
        ((3, 3, 32, 32), "B=3, the same as a fixed dim of the spec"),
        ((4, 3, 32), "has 4 dims but input 0 has shape"),
        ((4, 1, 32, 32), "fixes 3, but input 0 has 1 there"),
    ],
)
def test_bad_examples_are_usage_errors(example: tuple[int, ...], message: str):
    with pytest.raises(UsageError, match=message.replace("(", r"\(")):
        shapecheck.contract(seed_model_fixed(), "B 3 H W", example=example)


def test_a_spec_with_a_run_of_dims_and_an_example_that_fails_are_usage_errors():
    with pytest.raises(UsageError, match="one entry per dim"):
        shapecheck.contract(seed_model_fixed(), "B *", example=(4, 3, 32, 32))
    with pytest.raises(UsageError, match=r"does not run on the example.*explain"):
        shapecheck.contract(seed_model(), "B 3 H W", example=(4, 3, 32, 32))


def test_an_older_torch_is_told_the_version_contract_needs(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(shapecheck._compat, "TORCH", (2, 3))
    with pytest.raises(UsageError, match=r"shapecheck.contract needs torch >= 2\.\d+"):
        shapecheck.contract(seed_model_fixed(), "B 3 H W", example=(4, 3, 32, 32))


def test_import_and_explain_do_not_load_the_contract_modules():
    code = (
        "import sys, torch, shapecheck\n"
        "from shapecheck.demo import seed_model_fixed\n"
        "shapecheck.explain(seed_model_fixed(), torch.randn(1, 3, 32, 32))\n"
        "mine = ('shapecheck._contract', 'shapecheck._symbolic')\n"
        "loaded = [m for m in mine if m in sys.modules]\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize("name", ["shapecheck._contract", "shapecheck._symbolic"])
def test_docstring_examples(name: str):
    module = sys.modules[name]
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
    assert result.attempted > 0


# -- for the repair stage --------------------------------------------------------------------------
def test_the_hint_for_an_input_the_model_rejects_names_the_rule_and_an_example():
    hint = accepted_sizes_hint(seed_model_fixed(), (torch.randn(1, 3, 64, 64),))
    assert hint == "this model accepts H, W with (H//4)*(W//4) == 64, e.g. 32x32"
    assert accepted_sizes_hint(nn.Linear(4, 2), (torch.randn(3, 4),)) is None


def test_the_readme_section_runs_and_shows_the_real_contract(capsys: pytest.CaptureFixture[str]):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    start = readme.index("README-CONTRACT")
    code, shown = re.findall(r"```(?:python|text)\n(.*?)```", readme[start:], re.S)[:2]
    scope: dict[str, object] = {}
    checked = 0
    for line in code.splitlines():
        statement, _, comment = line.partition("  # ")
        statement = statement.strip()
        if not statement or statement.startswith(("import", "from", "c = ", "print(")):
            exec(statement, scope)  # the README's own lines
        else:
            assert eval(statement, scope) == ast.literal_eval(comment.strip()), line
            checked += 1
    assert checked == 6
    assert capsys.readouterr().out.rstrip("\n") == shown.rstrip("\n")
