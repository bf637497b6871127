"""docs/inputs.md states every limit in macssim/_validate.py with its value."""

from __future__ import annotations

import re
from pathlib import Path

from macssim._validate import Limits

DOC = Path(__file__).resolve().parent.parent / "docs" / "inputs.md"


def test_every_limit_is_documented_with_its_value():
    rows = dict(re.findall(r"^\| `(MAX_\w+)` \| ([^|]+?) \|", DOC.read_text(), re.M))
    limits = {k: v for k, v in vars(Limits).items() if k.startswith("MAX_")}
    assert set(rows) == set(limits)
    for name, value in limits.items():
        assert float(rows[name]) == float(value), name
