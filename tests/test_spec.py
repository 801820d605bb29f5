"""The shape-spec parser and matcher (shapecheck._spec): pure, no model needed."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shapecheck import UsageError
from shapecheck._spec import Bindings, Dim, match, parse_spec, symbol_dims


@pytest.mark.parametrize(
    ("spec", "text"),
    [
        ("B 3 32 32", "(B, 3, 32, 32)"),
        ("(B, 3, 32, 32)", "(B, 3, 32, 32)"),  # the tuple form the messages print
        (("B", 3, "H", "W"), "(B, 3, H, W)"),
        ("B * 10", "(B, *, 10)"),
        ("B ... 10", "(B, *, 10)"),
        (("B", ..., 10), "(B, *, 10)"),
        ("_ 512", "(_, 512)"),
        ("512", "(512,)"),
        ("", "()"),
        ("batch_1 0", "(batch_1, 0)"),  # size-0 dims are valid tensors
    ],
)
def test_valid_specs_parse_and_print_as_tuples(spec: object, text: str) -> None:
    assert str(parse_spec(spec)) == text  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("spec", "named"),
    [
        ("B 3 H?", "'H?'"),
        ("B 3.5", "'3.5'"),
        ("B 3 -1", "negative size -1"),
        (("B", -2), "negative size -2"),
        ("B * 3 ...", "more than one"),
        (("B", 3.0), "3.0"),
        ("B {C}", "'{C}'"),
        ("_x 3", "'_x'"),
        (42, "42"),
    ],
)
def test_bad_specs_raise_usage_error_naming_the_entry_and_the_valid_form(
    spec: object, named: str
) -> None:
    with pytest.raises(UsageError) as info:
        parse_spec(spec)  # type: ignore[arg-type]
    message = str(info.value)
    assert named in message
    assert "A valid spec" in message
    assert "'B 3 32 32'" in message
    assert isinstance(info.value, ValueError)


def test_symbols_bind_once_and_the_mismatch_names_where_they_were_bound() -> None:
    bindings = Bindings()
    assert match(parse_spec("B 3 H W"), (4, 3, 32, 32), "input 0", bindings) is None
    mismatch = match(parse_spec("B 32"), (64, 32), "layer '6'", bindings)
    assert mismatch is not None
    assert mismatch.reason == "B=4 from input 0 dim 0, but layer '6' has 64 at dim 0"
    assert bindings.describe() == (
        "B=4 (input 0 dim 0), H=32 (input 0 dim 2), W=32 (input 0 dim 3)"
    )


def test_a_failed_match_binds_nothing() -> None:
    bindings = Bindings()
    assert match(parse_spec("B C 7"), (2, 5, 8), "layer 'a'", bindings) is not None
    assert bindings.values == {}
    assert match(parse_spec("B C"), (3, 5), "layer 'b'", bindings) is None
    assert bindings.size("B") == 3


def test_the_same_symbol_twice_in_one_spec_must_agree() -> None:
    assert match(parse_spec("N N"), (3, 3), "x", Bindings()) is None
    mismatch = match(parse_spec("N N"), (3, 4), "x", Bindings())
    assert mismatch is not None
    assert mismatch.reason == "N=3 from x dim 0, but x has 4 at dim 1"


@pytest.mark.parametrize(
    ("spec", "shape", "reason"),
    [
        ("B 3 H", (1, 3, 32, 32), "x is 4-D (1, 3, 32, 32), but the spec (B, 3, H) needs 3 dims"),
        ("B * 3 4", (2, 4), "x is 2-D (2, 4), but the spec (B, *, 3, 4) needs at least 3 dims"),
        ("_ 512", (1, 8, 8, 8), "x is 4-D (1, 8, 8, 8), but the spec (_, 512) needs 2 dims"),
        ("* 512", (1, 8, 8, 8), "x has 8 at dim 3, the spec says 512"),
    ],
)
def test_rank_and_size_mismatches_say_what_differs(
    spec: str, shape: tuple[int, ...], reason: str
) -> None:
    mismatch = match(parse_spec(spec), shape, "x", Bindings())
    assert mismatch is not None
    assert mismatch.reason == reason


def test_rest_matches_any_run_including_none_and_aligns_the_tail_from_the_right() -> None:
    spec = parse_spec("B * C")
    for shape in [(2, 5), (2, 7, 5), (2, 7, 9, 5)]:
        bindings = Bindings()
        assert match(spec, shape, "x", bindings) is None
        assert bindings.values["C"] == (5, f"x dim {len(shape) - 1}")
    assert symbol_dims(spec, 4, "C") == [3]


def test_build_makes_a_shape_or_says_which_entry_has_no_size() -> None:
    spec = parse_spec("B 3 H W")
    assert spec.build({"B": 2, "H": 4, "W": 5}) == (2, 3, 4, 5)
    with pytest.raises(UsageError, match=r"uses the symbol H with no size: pass H=<int>"):
        spec.build({"B": 2})
    with pytest.raises(UsageError, match=r"cannot make a tensor"):
        parse_spec("B _").build({"B": 2})
    with pytest.raises(UsageError, match=r"must be an int >= 0"):
        spec.build({"B": -1, "H": 1, "W": 1})


_ENTRY = st.one_of(
    st.integers(0, 64).map(str),
    st.sampled_from(["B", "C", "H", "W", "_"]),
)


@settings(max_examples=60)
@given(st.lists(_ENTRY, max_size=5), st.booleans())
def test_printing_a_spec_and_parsing_it_again_gives_the_same_spec(
    entries: list[str], rest: bool
) -> None:
    spec = parse_spec(" ".join([*entries, "..."] if rest else entries))
    assert parse_spec(str(spec)) == spec


@settings(max_examples=60)
@given(st.lists(st.integers(0, 9), max_size=5))
def test_a_spec_of_fresh_symbols_matches_any_shape_of_its_rank(shape: list[int]) -> None:
    spec = parse_spec(tuple(f"D{i}" for i in range(len(shape))))
    bindings = Bindings()
    assert match(spec, shape, "x", bindings) is None
    assert [bindings.size(f"D{i}") for i in range(len(shape))] == shape
    assert match(spec, [*shape, 1], "x", Bindings()) is not None
    assert Dim("rest") in parse_spec("* 1").dims
