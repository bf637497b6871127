"""``--facts config.json`` (imports) is untrusted: a transformers config whose sizes
transformers would turn into modules. Each edit must load into valid facts or fail with a
CaptureError naming the file, in bounded time and memory — before, a config claiming
10⁷ layers built a 16 GB skeleton on the meta device."""

from __future__ import annotations

import json

import pytest

from tests.fuzz._harness import assert_names, run_bounded

pytest.importorskip("transformers")

from macssim.capture import facts_for  # noqa: E402
from macssim.capture._tiny import tiny_config  # noqa: E402

BASE = "qwen3-moe"
EDITS = {
    "num_hidden_layers": [0, -1, 10**7, 2.0, "8", None, [4]],
    "num_experts": [10**9, -3, 4.5, "many", True],
    "num_experts_per_tok": [100, 2.5, -1, 0],
    "hidden_size": [-4, 0, 2**40, 3.0],
    "vocab_size": [-1, 10**12],
    "num_attention_heads": [-8, 0],
    "moe_intermediate_size": [-1, 10**9],
    "model_type": ["zzz", 7, None],
}
CASES = [(k, v) for k, values in EDITS.items() for v in values]


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    """The tiny family's config; built once through ``facts_for`` so that the cases' time
    bound measures the case, not transformers' first import."""
    config = tiny_config(BASE).to_dict()
    path = tmp_path_factory.mktemp("config") / "config.json"
    path.write_text(json.dumps(config))
    facts_for(str(path))
    return config


@pytest.mark.parametrize(("field", "value"), CASES, ids=[f"{k}={v!r}" for k, v in CASES])
def test_config_edit_is_facts_or_a_clear_error(tmp_path, base, field, value):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**base, field: value}))
    outcome = run_bounded(lambda: facts_for(str(path)), name=f"{field}={value!r}")
    if outcome.error is not None:
        assert_names(outcome.error, str(path))
    else:  # accepted: the facts passed ModelFacts' own checks
        facts = outcome.value
        assert 1 <= facts.top_k <= facts.num_experts


@pytest.mark.parametrize("text", ["[1, 2]", "{", "", '{"a": NaN}', "null", "\xff\xfe"])
def test_a_config_that_is_not_a_json_object(tmp_path, text):
    path = tmp_path / "config.json"
    path.write_text(text, encoding="latin-1")
    outcome = run_bounded(lambda: facts_for(str(path)), name=repr(text))
    assert outcome.error is not None
    assert_names(outcome.error, str(path))


def test_huge_claims_are_refused_before_building(tmp_path, base):
    for edit in ({"num_hidden_layers": 10**7}, {"num_experts": 10**9},
                 {"num_hidden_layers": 1000, "num_experts": 1000}):
        path = tmp_path / "config.json"
        path.write_text(json.dumps({**base, **edit}))
        outcome = run_bounded(lambda p=path: facts_for(str(p)), name=str(edit))
        assert outcome.error is not None and outcome.peak_bytes < 64 << 20
