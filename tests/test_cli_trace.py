"""``macssim trace info|validate`` as a user runs them."""

from __future__ import annotations

import re

import numpy as np
from click.testing import CliRunner

from macssim.cli import main
from macssim.trace import open_trace


def test_info_summarises_the_trace(small_trace):
    res = CliRunner().invoke(main, ["trace", "info", str(small_trace)])
    assert res.exit_code == 0, res.output
    trace = open_trace(small_trace)
    steps = list(trace)
    image = sum(int((s.modality == 1).sum()) for s in steps)
    assert "small-moe" in res.output
    assert f"steps     {len(steps)} (1 prefill, {len(steps) - 1} decode)" in res.output
    assert re.search(rf"^image\s+{image}\s", res.output, re.M)
    # Per-layer imbalance: max/mean over experts of the layer's assignments, whole trace.
    load = sum(np.stack([np.bincount(s.topk_ids[layer].ravel(), minlength=32)
                         for layer in range(4)]) for s in steps)
    imbalance = load.max(axis=1) / load.mean(axis=1)
    worst = int(imbalance.argmax())
    assert f"worst layer ({worst})" in res.output
    assert f"{imbalance[worst]:.3f}" in res.output


def test_validate_passes_a_good_trace_and_names_a_bad_one(small_trace, tmp_path):
    ok = CliRunner().invoke(main, ["trace", "validate", str(small_trace)])
    assert ok.exit_code == 0 and "valid macssim trace v2" in ok.output
    data = bytearray(small_trace.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte inside a step's payload
    bad = tmp_path / "bad.mtrace"
    bad.write_bytes(bytes(data))
    res = CliRunner().invoke(main, ["trace", "validate", str(bad)])
    assert res.exit_code == 1
    assert str(bad) in res.output and "step" in res.output
    assert "Traceback" not in res.output
