"""Click parameter types for values that must be finite: ``float`` accepts ``inf``,
``nan`` and ``1e999``, and ``click.FloatRange`` lets ``nan`` through (every comparison
with it is false), so a ``--capacity-factor inf`` would reach the simulation."""

from __future__ import annotations

import math
from typing import Any

import click

from macssim._validate import finite_range_text

__all__ = ["FiniteFloat"]


class FiniteFloat(click.ParamType):
    """A finite float within [low, high]; ``low_open``/``high_open`` exclude the bound.

    The message says what is accepted: ``'inf' is not a finite number > 0 and <= 1e+06``.
    """

    name = "number"

    def __init__(self, low: float | None = None, high: float | None = None, *,
                 low_open: bool = False, high_open: bool = False) -> None:
        self.low, self.high = low, high
        self.low_open, self.high_open = low_open, high_open

    def expected(self) -> str:
        return finite_range_text(self.low, self.high, low_open=self.low_open,
                                 high_open=self.high_open)

    def get_metavar(self, param: click.Parameter, ctx: click.Context | None = None) -> str:
        return "FLOAT"

    def convert(self, value: Any, param: click.Parameter | None,
                ctx: click.Context | None) -> float:
        try:
            if isinstance(value, bool):
                raise ValueError
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            number = math.nan
        ok = math.isfinite(number)
        if ok and self.low is not None:
            ok = number > self.low if self.low_open else number >= self.low
        if ok and self.high is not None:
            ok = number < self.high if self.high_open else number <= self.high
        if not ok:
            shown = value if isinstance(value, str) else repr(value)
            if len(shown) > 60:
                shown = shown[:57] + "..."
            self.fail(f"{shown!r} is not {self.expected()}.", param, ctx)
        return number

    def __repr__(self) -> str:
        return f"FiniteFloat({self.expected()})"
