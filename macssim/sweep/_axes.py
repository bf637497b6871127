"""The axes a sweep can vary: one row of ``AXES`` per axis.

Each axis names its YAML key (plural, a list of values), its command-line flag (a
comma-separated list), the table column its value goes to, how one value is read from a
flag and checked, and which ``ReplayConfig`` field it sets. Adding an axis is one
``Axis(...)`` line here plus the field it sets; the cartesian product, the point identity,
the flags, the YAML reader and the table's columns all follow from the table.

Policies are not an axis: every point replays all of the sweep's policies side by side
(one row per policy), because a replay plans each step under every policy together and
always adds token-drop as the baseline of the ratios; a point per policy would replay
that baseline once per policy.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macssim._errors import MacssimError
from macssim._validate import Limits, brief, check_int, check_number, check_text

__all__ = ["AXES", "Axis", "SweepError", "axis", "meaningful"]


class SweepError(MacssimError):
    """A sweep specification, a results table or an SLA is not what macssim expects."""


def _parsed_as(convert: Callable[[str], Any]) -> Callable[[str], Any]:
    """A flag value converted, or left as text for the check to name."""
    def parse(text: str) -> Any:
        try:
            return convert(text)
        except ValueError:
            return text
    return parse


_float, _int = _parsed_as(float), _parsed_as(int)


def _positive_up_to(high: float) -> Callable[[Any, str, str], float]:
    def check(value: Any, where: str, field: str) -> float:
        return check_number(value, where, field, low=0.0, low_open=True, high=high,
                            error=SweepError)
    return check


_check_gamma = _positive_up_to(Limits.MAX_CAPACITY_FACTOR)
_check_rate = _positive_up_to(1e6)


def _check_choice_from(known: Callable[[], list[str]], what: str):
    def check(value: Any, where: str, field: str) -> str:
        names = known()
        if not isinstance(value, str) or value not in names:
            raise SweepError(f'{where}: "{field}": unknown {what} {brief(value)}; known: '
                             f"{', '.join(names)}")
        return value
    return check


def _check_topology(value: Any, where: str, field: str) -> str:
    """A preset name, or a topology YAML path (made absolute, so every worker finds it);
    loaded once here so a bad file is refused before any point runs."""
    from macssim.hardware import list_topology_presets, load_topology

    text = check_text(value, where, field, max_len=4096, error=SweepError)
    presets = {p.lower(): p for p in list_topology_presets()}
    if text.lower() in presets:
        return presets[text.lower()]
    if not text.endswith((".yaml", ".yml")) and os.sep not in text:
        raise SweepError(f'{where}: "{field}": unknown topology {brief(text)}; known presets: '
                         f"{', '.join(presets.values())}, or a path to a topology YAML")
    path = os.path.abspath(text)
    try:
        load_topology(path)
    except MacssimError as e:
        raise SweepError(f'{where}: "{field}": {e}') from e
    return path


def _check_trace(value: Any, where: str, field: str) -> str:
    """``default`` (the bundled trace), or a trace path (made absolute) whose header reads."""
    from macssim.trace import open_trace

    text = check_text(value, where, field, max_len=4096, error=SweepError)
    if text == "default":
        return text
    path = os.path.abspath(text)
    try:
        open_trace(path)
    except MacssimError as e:
        raise SweepError(f'{where}: "{field}": {e}') from e
    return path


def _check_scenario(value: Any, where: str, field: str) -> str:
    from macssim.trace import get_scenario, list_scenarios

    text = check_text(value, where, field, max_len=4096, error=SweepError)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        text = os.path.abspath(text)
    elif text.lower() not in list_scenarios():
        raise SweepError(f'{where}: "{field}": unknown scenario {brief(text)}; known: '
                         f"{', '.join(list_scenarios())}, or a path to a scenario YAML")
    try:
        get_scenario(text)
    except MacssimError as e:
        raise SweepError(f'{where}: "{field}": {e}') from e
    return text


def _precisions() -> list[str]:
    from macssim.cost import PRECISION_PRESETS

    return list(PRECISION_PRESETS)


def _engines() -> list[str]:
    from macssim.hardware import ENGINES

    return ["topology", *ENGINES]


def _check_redundant(value: Any, where: str, field: str) -> int:
    return check_int(value, where, field, low=0, high=65536, error=SweepError)


def _placements() -> list[str]:
    from macssim.placement import PLACEMENTS

    return list(PLACEMENTS)


def meaningful(axes: dict[str, Any]) -> bool:
    """Whether a combination of axis values is a configuration at all: redundant expert
    slots exist only under EPLB, so contiguous × N > 0 is left out of the product
    (contiguous × 0 and eplb × every N stay)."""
    return not (axes.get("placement") == "contiguous" and axes.get("redundant_experts", 0))


@dataclass(frozen=True)
class Axis:
    """One dimension of the cartesian product."""

    name: str
    """Table column and singular name (``capacity_factor``)."""
    key: str
    """YAML key, a list of values (``capacity_factors``)."""
    flag: str
    """Command-line flag taking comma-separated values (``--capacity-factor``)."""
    parse: Callable[[str], Any]
    """One value from its command-line text (the check then validates it)."""
    check: Callable[[Any, str, str], Any]
    """``check(value, where, field)`` -> the value as the sweep keeps it, or SweepError."""
    default: tuple[Any, ...]
    """Values when the sweep does not name the axis."""
    replay_field: str | None
    """``ReplayConfig`` field the value sets; None for an axis the point runner reads
    itself (the source of the routing: a trace, or a scenario to synthesise)."""
    help: str


AXES: tuple[Axis, ...] = (
    Axis("trace", "traces", "--trace", str, _check_trace, ("default",), None,
         "routing traces to replay (paths; 'default' is the bundled trace)"),
    Axis("scenario", "scenarios", "--scenario", str, _check_scenario, (), None,
         "synthetic scenarios (names or YAML paths), synthesised per point instead of a trace"),
    Axis("topology", "topologies", "--topology", str, _check_topology, ("8xH100",),
         "topology", "topology presets or YAML paths"),
    Axis("capacity_factor", "capacity_factors", "--capacity-factor", _float, _check_gamma,
         (1.0,), "capacity_factor", "γ of every capacity policy"),
    Axis("precision", "precisions", "--precision", str,
         _check_choice_from(_precisions, "precision"), ("bf16",), "precision",
         "precision presets (bf16, fp8-experts, fp8)"),
    Axis("alltoall", "alltoall", "--alltoall", str, _check_choice_from(_engines, "engine"),
         ("topology",), "alltoall",
         "all-to-all engines; 'topology' runs the topology's own"),
    Axis("arrival_rate", "arrival_rates", "--arrival-rate", _float, _check_rate, (), None,
         "Poisson arrival rates (requests/s): each point serves requests as `macssim serve` "
         "does, one run per policy, instead of replaying the trace's batches"),
    Axis("placement", "placements", "--placement", str,
         _check_choice_from(_placements, "placement"), ("contiguous",), "placement",
         "expert placements (contiguous, eplb)"),
    Axis("redundant_experts", "redundant_experts", "--redundant-experts", _int,
         _check_redundant, (0,), "redundant_experts",
         "EPLB's extra expert slots (with placement eplb; contiguous takes only 0)"),
)
"""Outermost first: the product varies the last axis fastest."""


def axis(name: str) -> Axis:
    for a in AXES:
        if a.name == name:
            return a
    raise SweepError(f"unknown axis {brief(name)}; known: {', '.join(a.name for a in AXES)}")


def replay_value(ax: Axis, value: Any) -> Any:
    """The ``ReplayConfig`` value of an axis value (``topology`` engine -> None)."""
    if ax.name == "alltoall" and value == "topology":
        return None
    return value


def trace_path(value: str) -> Path:
    from macssim._resources import DEFAULT_TRACE

    return DEFAULT_TRACE if value == "default" else Path(value)
