"""What a sweep runs: the values of each axis, the settings every point shares, and the
points of their cartesian product, each with an identity that ``--resume`` trusts."""

from __future__ import annotations

import hashlib
import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from macssim import __version__
from macssim._validate import (
    Limits,
    brief,
    check_int,
    check_number,
    check_text,
    load_yaml,
    mapping,
)
from macssim.sweep._axes import AXES, SweepError, meaningful

__all__ = ["MAX_POINTS", "Point", "SweepSpec", "load_sweep", "make_sweep"]

MAX_POINTS = 100_000
"""Points in one sweep: each is at least one replay (seconds); more is a typo in a list."""
MAX_AXIS_VALUES = 1_000

_SETTINGS_DEFAULTS: dict[str, Any] = {
    "policies": ("macs", "expanded-drop", "token-drop"),
    "steps": None,
    "seed": 0,
    "network_rtol": 0.0,
    "model": "qwen3-vl-30b-a3b",
    "scenario_steps": 8,
    "requests": 32,
    "sla_ttft": 2.0,
    "sla_tpot": 0.03,
}
"""Settings every point shares (part of each point's identity): the policies replayed
side by side, the replayed steps (None: all), the seed, the network tolerance, for a
scenario the model preset and how many steps to synthesise, and for a serving sweep
(arrival rates given) the requests each run serves and the SLA its goodput counts."""


@dataclass(frozen=True)
class Point:
    """One configuration: a value per axis plus the shared settings."""

    index: int
    """Position in the product (the table's row order)."""
    axes: dict[str, Any]
    settings: dict[str, Any]

    @property
    def point_id(self) -> str:
        """sha256 of the axes, the settings and macssim's version: a finished point with
        this id is not run again by ``--resume``; another version's results never match."""
        doc = {"macssim": __version__, "axes": self.axes,
               "settings": {k: list(v) if isinstance(v, tuple) else v
                            for k, v in self.settings.items()}}
        blob = json.dumps(doc, sort_keys=True, separators=(",", ":")).encode()
        return hashlib.sha256(blob).hexdigest()[:20]

    def to_dict(self) -> dict[str, Any]:
        """Plain data for a worker process or a Ray task."""
        return {"index": self.index, "axes": dict(self.axes),
                "settings": {k: list(v) if isinstance(v, tuple) else v
                             for k, v in self.settings.items()}}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Point:
        s = dict(d["settings"])
        s["policies"] = tuple(s["policies"])
        return cls(index=d["index"], axes=dict(d["axes"]), settings=s)


@dataclass(frozen=True)
class SweepSpec:
    """Checked values per axis and the shared settings; ``points()`` is their product."""

    values: dict[str, tuple[Any, ...]]
    """Axis name -> values (every axis of ``AXES``, in order; an unused source axis is
    empty and left out of the product)."""
    settings: dict[str, Any] = field(default_factory=dict)

    def active_axes(self) -> list[str]:
        """Axes in the product: all but the unused source (trace or scenario), and arrival
        rates only when given (a serving sweep)."""
        source = "scenario" if self.values.get("scenario") else "trace"
        return [a.name for a in AXES
                if (a.name not in ("trace", "scenario") or a.name == source)
                and (a.name != "arrival_rate" or self.values.get("arrival_rate"))]

    def points(self) -> list[Point]:
        """The product, less combinations that are no configuration (``meaningful``)."""
        names = self.active_axes()
        combos = (dict(zip(names, combo, strict=True))
                  for combo in itertools.product(*(self.values[n] for n in names)))
        return [Point(index=i, axes=axes, settings=dict(self.settings))
                for i, axes in enumerate(a for a in combos if meaningful(a))]

    def num_points(self) -> int:
        """``len(points())`` without building them (the product may be huge): only the
        placement × redundant-experts pairs can be left out (``meaningful``), so count
        those and scale by the other axes."""
        full = 1
        for name in self.active_axes():
            full *= len(self.values[name])
        placements, redundant = self.values["placement"], self.values["redundant_experts"]
        pairs = len(placements) * len(redundant)
        kept = sum(meaningful({"placement": p, "redundant_experts": n})
                   for p, n in itertools.product(placements, redundant))
        return full // pairs * kept if pairs else full


def make_sweep(values: dict[str, Any], settings: dict[str, Any] | None = None, *,
               where: str = "sweep") -> SweepSpec:
    """A checked spec from axis values (lists, keyed by axis name) and settings.

    Raises SweepError naming ``where``, the field and what was expected: an unknown axis
    or setting, an empty axis, an unknown value, a sweep of no or too many points."""
    known = {a.name for a in AXES}
    for name in values:
        if name not in known:
            raise SweepError(f"{where}: unknown axis {brief(name)}; known: "
                             f"{', '.join(a.name for a in AXES)}")
    if values.get("trace") and values.get("scenario"):
        raise SweepError(f"{where}: give traces or scenarios, not both (a point replays one "
                         "routing source)")
    checked: dict[str, tuple[Any, ...]] = {}
    for ax in AXES:
        given = values.get(ax.name)
        if given is None:
            raw: tuple[Any, ...] = () if (ax.name == "trace" and values.get("scenario")) \
                else ax.default
        else:
            if not isinstance(given, list | tuple):
                raise SweepError(f'{where}: "{ax.key}" must be a list of values, got '
                                 f"{brief(given)}")
            if not given:
                raise SweepError(f'{where}: "{ax.key}" is empty: the sweep would have no '
                                 "points; leave it out for the default "
                                 f"({', '.join(map(str, ax.default)) or 'none'})")
            if len(given) > MAX_AXIS_VALUES:
                raise SweepError(f'{where}: "{ax.key}" has {len(given)} values, at most '
                                 f"{MAX_AXIS_VALUES}")
            raw = tuple(given)
        vals = tuple(ax.check(v, where, f"{ax.key}[{i}]") for i, v in enumerate(raw))
        dupes = sorted({str(v) for v in vals if vals.count(v) > 1})
        if dupes:
            raise SweepError(f'{where}: "{ax.key}" repeats {", ".join(dupes)}')
        checked[ax.name] = vals
    spec = SweepSpec(values=checked, settings=_check_settings(settings or {}, where))
    n = spec.num_points()
    if n == 0:
        raise SweepError(f"{where}: the sweep has no points")
    if n > MAX_POINTS:
        raise SweepError(f"{where}: {n} points, at most {MAX_POINTS}; narrow an axis")
    return spec


def _check_settings(given: dict[str, Any], where: str) -> dict[str, Any]:
    from macssim.policies import list_policies
    from macssim.trace import list_model_presets

    unknown = sorted(set(given) - set(_SETTINGS_DEFAULTS))
    if unknown:
        raise SweepError(f"{where}: unknown setting {brief(unknown[0])}; known: "
                         f"{', '.join(_SETTINGS_DEFAULTS)}")
    s = {**_SETTINGS_DEFAULTS, **{k: v for k, v in given.items() if v is not None}}
    policies = s["policies"]
    if isinstance(policies, str):
        policies = [p.strip() for p in policies.split(",") if p.strip()]
    if not isinstance(policies, list | tuple) or not policies:
        raise SweepError(f'{where}: "policies" must be a non-empty list of policy names, got '
                         f"{brief(policies)}")
    known = list(list_policies())
    for i, p in enumerate(policies):
        if not isinstance(p, str) or p not in known:
            raise SweepError(f'{where}: "policies[{i}]": unknown policy {brief(p)}; known: '
                             f"{', '.join(known)}")
    s["policies"] = tuple(dict.fromkeys(policies))
    if s["steps"] is not None:
        s["steps"] = check_int(s["steps"], where, "steps", low=1, high=Limits.MAX_STEPS,
                               error=SweepError)
    s["seed"] = check_int(s["seed"], where, "seed", low=0, high=Limits.MAX_SEED,
                          error=SweepError)
    s["network_rtol"] = check_number(s["network_rtol"], where, "network_rtol", low=0.0,
                                     high=1.0, high_open=True, error=SweepError)
    model = check_text(s["model"], where, "model", error=SweepError)
    if model not in list_model_presets():
        raise SweepError(f'{where}: "model": unknown model preset {brief(model)}; known: '
                         f"{', '.join(list_model_presets())}")
    s["model"] = model
    s["scenario_steps"] = check_int(s["scenario_steps"], where, "scenario_steps", low=1,
                                    high=Limits.MAX_STEPS, error=SweepError)
    s["requests"] = check_int(s["requests"], where, "requests", low=1,
                              high=Limits.MAX_STEPS, error=SweepError)
    for name in ("sla_ttft", "sla_tpot"):
        s[name] = check_number(s[name], where, name, low=0.0, low_open=True, high=1e6,
                               error=SweepError)
    return s


def load_sweep(path: str | Path, overrides: dict[str, Any] | None = None,
               setting_overrides: dict[str, Any] | None = None) -> SweepSpec:
    """A sweep from a YAML file: axis keys (``topologies: [8xH100, 16xH100]``) and
    settings (``policies``, ``steps``, ``seed``, ``network_rtol``, ``model``,
    ``scenario_steps``); ``overrides`` (axis name -> values, from flags) win. Relative
    paths in the file are relative to the file's folder."""
    where = str(path)
    doc = load_yaml(path, what="sweep", error=SweepError)
    doc = {} if doc is None else mapping(doc, where, "", error=SweepError)
    by_key = {a.key: a for a in AXES}
    values: dict[str, Any] = {}
    settings: dict[str, Any] = {}
    for key, value in doc.items():
        if key in by_key:
            ax = by_key[key]
            if ax.name in ("trace", "scenario", "topology") and isinstance(value, list):
                value = [_relative_to(v, Path(path).parent, any_text=ax.name == "trace")
                         for v in value]
            values[ax.name] = value
        elif key in _SETTINGS_DEFAULTS:
            settings[key] = value
        else:
            raise SweepError(f"{where}: unknown field {brief(key)}; known: "
                             f"{', '.join([a.key for a in AXES] + list(_SETTINGS_DEFAULTS))}")
    values.update(overrides or {})
    settings.update(setting_overrides or {})
    return make_sweep(values, settings, where=where)


def _relative_to(value: Any, folder: Path, *, any_text: bool) -> Any:
    """A path relative to the sweep file's folder; names (a preset, ``default``) stay.
    ``any_text``: every value but ``default`` is a path (traces)."""
    if not isinstance(value, str) or Path(value).is_absolute() or value == "default":
        return value
    if any_text or value.endswith((".yaml", ".yml")):
        return str(folder / value)
    return value
