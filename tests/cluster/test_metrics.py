"""Metrics are defined once: the docs page is the module's table, word for word."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from macssim.cluster.metrics import imbalance, metrics_markdown, straggler_delay_s

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_docs_metrics_md_matches_the_module():
    assert (REPO_ROOT / "docs" / "metrics.md").read_text(encoding="utf-8") == metrics_markdown()


def test_imbalance_and_straggler_formulas():
    assert imbalance(np.array([4, 2, 2, 0])) == pytest.approx(2.0)
    assert imbalance(np.zeros(4)) == 1.0
    assert straggler_delay_s(np.array([1.0, 1.0, 4.0])) == pytest.approx(2.0)
    assert straggler_delay_s(np.full(8, 3.0)) == 0.0
    # Arrivals before the MoE layer's start (at 2.0) count as arriving at it.
    assert straggler_delay_s(np.array([0.0, 1.0, 4.0, 3.0]), 2.0) == pytest.approx(
        4.0 - (2.0 + 2.0 + 4.0 + 3.0) / 4)
    assert straggler_delay_s(np.array([0.0, 0.0, 0.0, 5.0]), 2.0) == pytest.approx(
        (5.0 - 2.0) * 3 / 4)
