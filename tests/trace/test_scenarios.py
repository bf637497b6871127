"""Scenario files: the bundled ones say what DESIGN.md says about traffic, and bad files
fail with the file and the field named."""

from __future__ import annotations

import json
import textwrap

import pytest

from macssim import TraceError
from macssim._resources import SCENARIOS_DIR
from macssim.trace import RequestKind, Scenario, get_scenario, list_scenarios, load_scenario

REQUIRED = ("chartqa", "chat", "docvqa", "mixed", "video")


def test_bundled_scenarios_are_listed_and_load() -> None:
    assert set(REQUIRED) <= set(list_scenarios())
    for name in list_scenarios():
        s = get_scenario(name)
        assert isinstance(s, Scenario) and s.name == name
        assert s.batch_size >= 1 and s.decode_steps >= 0 and s.requests
        json.dumps(s.to_dict())  # provenance must be JSON


@pytest.mark.parametrize("name", ["docvqa", "chartqa", "video"])
def test_visual_scenarios_are_image_heavy(name: str) -> None:
    assert get_scenario(name).visual_share() > 0.9


def test_chat_is_text_heavy() -> None:
    assert get_scenario("chat").visual_share() < 0.2


def test_chartqa_prompts_span_design_range() -> None:
    """DESIGN.md section 3: chart/MMMU/MMStar prompts run about 900-3,000 tokens, mostly
    image tokens: every request the scenario can draw lies within 10 % of that range."""
    for kind in get_scenario("chartqa").requests:
        lows = kind.image_tokens[0] + kind.video_tokens[0] + kind.text_tokens[0]
        highs = kind.image_tokens[1] + kind.video_tokens[1] + kind.text_tokens[1]
        assert 900 * 0.9 <= lows and highs <= 3000 * 1.1
        assert kind.image_tokens[0] > kind.text_tokens[1]  # mostly image tokens


def test_mixed_blends_scenarios_by_weight() -> None:
    mixed = get_scenario("mixed")
    blend = dict(mixed.blend)
    total = sum(blend.values())
    for part, weight in blend.items():
        share = sum(k.weight for k in mixed.requests if k.name.startswith(f"{part}/"))
        assert share == pytest.approx(weight)
        assert len([k for k in mixed.requests if k.name.startswith(f"{part}/")]) == \
            len(get_scenario(part).requests)
    assert sum(k.weight for k in mixed.requests) == pytest.approx(total)


def test_unknown_scenario_lists_known_ones() -> None:
    with pytest.raises(TraceError) as err:
        get_scenario("ocr")
    assert str(err.value) == f"unknown scenario 'ocr'; known: {', '.join(list_scenarios())}"


def test_scenario_by_path(tmp_path) -> None:
    path = tmp_path / "tiny.yaml"
    path.write_text(_GOOD)
    s = get_scenario(str(path))
    assert s.name == "tiny" and s.requests[0].image_tokens == (10, 20)
    assert s.requests[0].redundant_frac == 0.5  # the documented default


_GOOD = textwrap.dedent("""\
    name: tiny
    batch_size: 2
    decode_steps: 3
    requests:
      - kind: a
        weight: 1
        image_tokens: [10, 20]
        text_tokens: [1, 5]
    """)

_BAD = {
    "batch_size": ("batch_size: 2", "batch_size: 0"),
    "decode_steps": ("decode_steps: 3\n", ""),
    "image_tokens": ("image_tokens: [10, 20]", "image_tokens: [20, 10]"),
    "weight": ("weight: 1", "weight: -1"),
    "colour": ("name: tiny", "name: tiny\ncolour: red"),
    "redundant_frac": ("weight: 1", "weight: 1\n    redundant_frac: 1.5"),
    "text_tokens": ("text_tokens: [1, 5]", "text_tokens: [1.5, 5]"),
}


@pytest.mark.parametrize("field", sorted(_BAD))
def test_validation_names_file_and_field(tmp_path, field: str) -> None:
    old, new = _BAD[field]
    path = tmp_path / "broken.yaml"
    path.write_text(_GOOD.replace(old, new, 1))
    with pytest.raises(TraceError) as err:
        load_scenario(path)
    message = str(err.value)
    assert str(path) in message and field in message


def test_requests_must_be_a_list(tmp_path) -> None:
    path = tmp_path / "none.yaml"
    path.write_text("name: none\nbatch_size: 1\ndecode_steps: 0\nrequests: []\n")
    with pytest.raises(TraceError, match=r'none\.yaml: "requests" must be a non-empty list'):
        load_scenario(path)


def test_request_needs_a_token(tmp_path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(_GOOD.replace("image_tokens: [10, 20]", "image_tokens: [0, 20]")
                    .replace("text_tokens: [1, 5]", "text_tokens: [0, 5]"))
    with pytest.raises(TraceError, match=r"empty\.yaml: requests\[0\].*at least one token"):
        load_scenario(path)


def test_blend_errors(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(_GOOD.replace("name: tiny", "name: a"))
    path = tmp_path / "b.yaml"
    path.write_text("name: b\nbatch_size: 1\ndecode_steps: 0\nblend:\n  a: 1\n  zz: 1\n")
    with pytest.raises(TraceError, match=r"b\.yaml.*blend\.zz.*unknown scenario 'zz'; known: a, b"):
        load_scenario(path)
    path.write_text("name: b\nbatch_size: 1\ndecode_steps: 0\nblend:\n  b: 1\n")
    with pytest.raises(TraceError, match=r"b\.yaml.*blend\.b.*refers back to itself"):
        load_scenario(path)
    path.write_text("name: b\nbatch_size: 1\ndecode_steps: 0\nblend:\n  a: 2\n")
    blended = load_scenario(path)
    assert [k.name for k in blended.requests] == ["a/a"] and blended.requests[0].weight == 2


def test_not_yaml_or_not_mapping(tmp_path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(TraceError, match=r"x\.yaml: not valid YAML"):
        load_scenario(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(TraceError, match=r"x\.yaml: expected a mapping"):
        load_scenario(path)
    with pytest.raises(TraceError, match=r"missing\.yaml: cannot read"):
        load_scenario(tmp_path / "missing.yaml")


def test_overrides_are_validated() -> None:
    s = get_scenario("docvqa")
    assert s.with_overrides(batch_size=1, decode_steps=0).batch_size == 1
    with pytest.raises(TraceError, match='"batch_size" must be an integer >= 1'):
        s.with_overrides(batch_size=0)


def test_bundled_files_live_in_scenarios_dir() -> None:
    assert sorted(p.stem for p in SCENARIOS_DIR.glob("*.yaml")) == list_scenarios()


def test_direct_construction_is_validated() -> None:
    with pytest.raises(TraceError, match="request kind 'x': \"image_tokens\""):
        RequestKind("x", 1.0, (5, 2), (0, 0), (1, 1))
    with pytest.raises(TraceError, match="request kind 'x': \"weight\""):
        RequestKind("x", 0.0, (5, 6), (0, 0), (1, 1))
    kind = RequestKind("x", 1.0, (5, 6), (0, 0), (1, 1))
    with pytest.raises(TraceError, match="scenario 's': \"batch_size\""):
        Scenario(name="s", description="", batch_size=0, decode_steps=1, requests=(kind,))
    with pytest.raises(TraceError, match="scenario 's': \"requests\""):
        Scenario(name="s", description="", batch_size=1, decode_steps=1, requests=())


@pytest.mark.parametrize("old, new, says", [
    ("batch_size: 2", "batch_size: 1000000000000", '"batch_size" must be an integer >= 1 and '
                                                   "<= 65536, got 1000000000000"),
    ("batch_size: 2", "batch_size: 2.0", '"batch_size" must be an integer'),
    ("batch_size: 2", "batch_size: .nan", '"batch_size" must be an integer'),
    ("decode_steps: 3", "decode_steps: 1e18", '"decode_steps" must be an integer'),
    ("weight: 1", "weight: .inf", '"weight" must be a finite number >= 1e-06 and <= 1e+06'),
    ("weight: 1", "weight: .nan", '"weight" must be a finite number'),
    ("weight: 1", "weight: 1e308", '"weight" must be a finite number'),
    ("weight: 1", "weight: true", '"weight" must be a finite number'),
    ("weight: 1", "weight: 1\n    redundant_frac: .nan", '"redundant_frac" must be a finite'),
    ("image_tokens: [10, 20]", "image_tokens: [10, 100000000000]",
     '"image_tokens" must be [min, max] integers with 0 <= min <= max <= 1048576'),
    ("image_tokens: [10, 20]", "image_tokens: [10, 1000000]",
     '"batch_size" 2 × the longest prompt a request may have (1000005 tokens) = 2000010 '
     "tokens in one prefill step; at most 1048576"),
    ("kind: a", "kind: [a]", '"kind" must be a non-empty string'),
    ("name: tiny", "name: {a: 1}", '"name" must be a non-empty string'),
    ("name: tiny", "name: tiny\ndescription: [1]", '"description" must be a string'),
    ("name: tiny", "name: tiny\nsources: 3", '"sources" must be a list'),
    ("name: tiny", "name: tiny\n1: 2", "field names must be strings"),
])
def test_numbers_are_finite_and_counts_bounded(tmp_path, old: str, new: str, says: str) -> None:
    path = tmp_path / "fuzzed.yaml"
    path.write_text(_GOOD.replace(old, new, 1))
    with pytest.raises(TraceError) as err:
        load_scenario(path)
    assert str(err.value).startswith(f"{path}: ") and says in str(err.value), str(err.value)


def test_blends_are_bounded_and_name_both_files(tmp_path) -> None:
    (tmp_path / "a.yaml").write_text(_GOOD.replace("name: tiny", "name: a")
                                     .replace("weight: 1", "weight: -1"))
    b = tmp_path / "b.yaml"
    b.write_text("name: b\nbatch_size: 1\ndecode_steps: 0\nblend:\n  a: 1\n")
    with pytest.raises(TraceError) as err:
        load_scenario(b)
    assert str(err.value).startswith(f'{b}: "blend.a": {tmp_path / "a.yaml"}: requests[0]: '
                                     '"weight" must be')
    b.write_text("name: b\nbatch_size: 1\ndecode_steps: 0\nblend:\n  ../a: 1\n")
    with pytest.raises(TraceError, match=r'b\.yaml: "blend" keys must be scenario names'):
        load_scenario(b)
    # A chain of blends ten deep: refused at the limit, naming the chain.
    (tmp_path / "c0.yaml").write_text(_GOOD.replace("name: tiny", "name: c0"))
    for i in range(1, 11):
        (tmp_path / f"c{i}.yaml").write_text(
            f"name: c{i}\nbatch_size: 1\ndecode_steps: 0\nblend:\n  c{i - 1}: 1\n")
    with pytest.raises(TraceError, match="blends nest more than 8 deep"):
        load_scenario(tmp_path / "c10.yaml")
    assert load_scenario(tmp_path / "c7.yaml").requests[0].name == "c6/c5/c4/c3/c2/c1/c0/a"
    # A diamond of blends reads each file many times: bounded by MAX_BLEND_FILES.
    for x in "def":
        (tmp_path / f"{x}0.yaml").write_text(_GOOD.replace("name: tiny", f"name: {x}0"))
    for i in range(1, 8):
        for x in "def":
            (tmp_path / f"{x}{i}.yaml").write_text(
                f"name: {x}{i}\nbatch_size: 1\ndecode_steps: 0\nblend:\n  d{i - 1}: 1\n"
                f"  e{i - 1}: 1\n  f{i - 1}: 1\n")
    with pytest.raises(TraceError, match="more than 256 scenario files"):
        load_scenario(tmp_path / "d7.yaml")


def test_overrides_keep_a_prefill_step_bounded() -> None:
    with pytest.raises(TraceError, match=r"scenario 'video': \"batch_size\" 65536 × the "
                                         r"longest prompt"):
        get_scenario("video").with_overrides(batch_size=65536)
    with pytest.raises(TraceError, match=r'"decode_steps" must be an integer >= 0 and <= '):
        get_scenario("video").with_overrides(decode_steps=10**12)


def test_yaml_is_read_safely(tmp_path) -> None:
    marker = tmp_path / "executed"
    path = tmp_path / "evil.yaml"
    path.write_text(f"name: !!python/object/apply:os.system ['touch {marker}']\n"
                    + _GOOD.split("\n", 1)[1])
    with pytest.raises(TraceError, match=r"evil\.yaml: not valid YAML"):
        load_scenario(path)
    assert not marker.exists()
    path.write_bytes(b"name: \xff\xfe\n")
    with pytest.raises(TraceError, match=r"evil\.yaml: not UTF-8"):
        load_scenario(path)
    with pytest.raises(TraceError, match="cannot read scenario file"):
        load_scenario(tmp_path)
