"""Synthetic-traffic scenarios: what requests a serving engine sees, read from
``scenarios/*.yaml``.

A scenario is the traffic half of a synthetic trace (the routing half is
``RoutingKnobs``): which kinds of request arrive and in what proportion, how many image,
video and text tokens each kind brings, how many requests share a prefill batch and how
many decode steps follow it. Files are validated on load; every error names the file and
the field. A scenario may also be a weighted ``blend`` of other scenarios (``mixed``).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from macssim._errors import TraceError
from macssim._resources import SCENARIOS_DIR

__all__ = [
    "RequestKind",
    "Scenario",
    "get_scenario",
    "list_scenarios",
    "load_scenario",
]

_KIND_KEYS = ("kind", "weight", "image_tokens", "video_tokens", "text_tokens", "redundant_frac")
_SCENARIO_KEYS = ("name", "description", "batch_size", "decode_steps", "requests", "blend",
                  "sources")
DEFAULT_REDUNDANT_FRAC = 0.5
"""Share of a request's visual tokens that sit in redundant background clusters when a
request kind does not say (FastV, arXiv 2403.06764: half of the image tokens can be
dropped after layer 2 with no loss on its image and video benchmarks)."""


@dataclass(frozen=True)
class RequestKind:
    """One kind of request in a scenario; token counts are drawn uniformly from the
    inclusive ranges ``[min, max]`` per request."""

    name: str
    weight: float
    """Relative frequency of this kind among the scenario's requests (> 0)."""
    image_tokens: tuple[int, int]
    """LLM-facing image tokens per request (after the vision encoder's merge)."""
    video_tokens: tuple[int, int]
    """LLM-facing video tokens per request."""
    text_tokens: tuple[int, int]
    """Prompt text tokens per request (template, system prompt, question, history)."""
    redundant_frac: float = DEFAULT_REDUNDANT_FRAC
    """Share of the visual tokens that are redundant background (clustered, high
    feature entropy); the rest are salient."""

    def __post_init__(self) -> None:
        where = f"request kind {self.name!r}"
        _float(self.weight, where, "weight", low=0.0, open_low=True)
        for name in ("image_tokens", "video_tokens", "text_tokens"):
            _range(list(getattr(self, name)), where, name)
        _float(self.redundant_frac, where, "redundant_frac", low=0.0, high=1.0)
        if self.image_tokens[0] + self.video_tokens[0] + self.text_tokens[0] < 1:
            raise TraceError(f'{where}: a request must hold at least one token: the minimums '
                             'of "image_tokens", "video_tokens" and "text_tokens" sum to 0')

    @property
    def mean_prompt_tokens(self) -> float:
        return sum((lo + hi) / 2 for lo, hi in (self.image_tokens, self.video_tokens,
                                                self.text_tokens))


@dataclass(frozen=True)
class Scenario:
    """A traffic pattern: request kinds with weights, batch size and decode length.

    Steps: a prefill step holds every prompt token of ``batch_size`` requests; then
    ``decode_steps`` steps hold one text token per request; then a new batch begins.
    """

    name: str
    description: str
    batch_size: int
    """Requests per prefill batch."""
    decode_steps: int
    """Decode steps after each prefill step (0: prefill only)."""
    requests: tuple[RequestKind, ...]
    """Request kinds; for a blend, every kind of every blended scenario, weights scaled."""
    blend: tuple[tuple[str, float], ...] = ()
    """For a blend: (scenario name, weight) pairs it was resolved from."""
    sources: tuple[str, ...] = ()
    """Published figures the token ranges lean on."""

    def __post_init__(self) -> None:
        where = f"scenario {self.name!r}"
        _int(self.batch_size, where, "batch_size", minimum=1)
        _int(self.decode_steps, where, "decode_steps", minimum=0)
        if not self.requests or not all(isinstance(k, RequestKind) for k in self.requests):
            raise TraceError(f'{where}: "requests" must be a non-empty tuple of RequestKind')

    @property
    def steps_per_batch(self) -> int:
        return 1 + self.decode_steps

    def mean_prompt_tokens(self) -> float:
        total = sum(k.weight for k in self.requests)
        return sum(k.weight * k.mean_prompt_tokens for k in self.requests) / total

    def visual_share(self) -> float:
        """Expected share of prompt tokens that are image or video tokens."""
        total = sum(k.weight for k in self.requests)
        visual = sum(k.weight * (sum(k.image_tokens) + sum(k.video_tokens)) / 2
                     for k in self.requests) / total
        return visual / self.mean_prompt_tokens()

    def with_overrides(self, *, batch_size: int | None = None,
                       decode_steps: int | None = None) -> Scenario:
        """A copy with batch size and/or decode steps replaced (validated)."""
        where = f"scenario {self.name!r}"
        values = {}
        if batch_size is not None:
            values["batch_size"] = _int(batch_size, where, "batch_size", minimum=1)
        if decode_steps is not None:
            values["decode_steps"] = _int(decode_steps, where, "decode_steps", minimum=0)
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        """Every resolved setting, JSON-ready (recorded in a trace's provenance)."""
        data = dataclasses.asdict(self)
        data["requests"] = [dataclasses.asdict(k) for k in self.requests]
        data["blend"] = {name: w for name, w in self.blend}
        return data


# -- validation helpers ------------------------------------------------------------------
def _int(value: Any, where: str, name: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise TraceError(f'{where}: "{name}" must be an integer >= {minimum}, got {value!r}')
    return int(value)


def _float(value: Any, where: str, name: str, *, low: float, high: float | None = None,
           open_low: bool = False) -> float:
    ok = isinstance(value, int | float) and not isinstance(value, bool)
    if ok:
        ok = (value > low if open_low else value >= low) and (high is None or value <= high)
    if not ok:
        bound = f"> {low}" if open_low else f">= {low}"
        if high is not None:
            bound += f" and <= {high}"
        raise TraceError(f'{where}: "{name}" must be a number {bound}, got {value!r}')
    return float(value)


def _range(value: Any, where: str, name: str) -> tuple[int, int]:
    if value is None:
        return (0, 0)
    good = (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] <= value[1])
    if not good:
        raise TraceError(f'{where}: "{name}" must be [min, max] integers with 0 <= min <= max, '
                         f"got {value!r}")
    return (int(value[0]), int(value[1]))


def _check_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(map(str, data)) - set(known))
    if unknown:
        raise TraceError(f"{where}: unknown field(s) {unknown}; known: {list(known)}")


def _request_kind(data: Any, where: str) -> RequestKind:
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a mapping with fields {list(_KIND_KEYS)}, "
                         f"got {type(data).__name__}")
    _check_keys(data, _KIND_KEYS, where)
    if not isinstance(data.get("kind"), str) or not data["kind"]:
        raise TraceError(f'{where}: "kind" must be a non-empty name, got {data.get("kind")!r}')
    ranges = {name: _range(data.get(name), where, name)
              for name in ("image_tokens", "video_tokens", "text_tokens")}
    if sum(lo for lo, _ in ranges.values()) < 1:
        raise TraceError(f'{where}: a request must hold at least one token: the minimums of '
                         '"image_tokens", "video_tokens" and "text_tokens" sum to 0')
    return RequestKind(
        name=data["kind"],
        weight=_float(data.get("weight", 1.0), where, "weight", low=0.0, open_low=True),
        redundant_frac=_float(data.get("redundant_frac", DEFAULT_REDUNDANT_FRAC), where,
                              "redundant_frac", low=0.0, high=1.0),
        **ranges,
    )


def _resolve_blend(data: Any, where: str, path: Path,
                   stack: tuple[str, ...]) -> tuple[tuple[RequestKind, ...],
                                                    tuple[tuple[str, float], ...]]:
    """Turn ``{scenario: weight}`` into the blended scenarios' request kinds, each kind's
    weight scaled so that the scenario gets its share of requests."""
    if not isinstance(data, dict) or not data:
        raise TraceError(f'{where}: "blend" must map scenario names to weights, got {data!r}')
    kinds: list[RequestKind] = []
    pairs: list[tuple[str, float]] = []
    for name, weight in data.items():
        w = _float(weight, where, f"blend.{name}", low=0.0, open_low=True)
        if str(name) in stack:
            raise TraceError(f'{where}: "blend.{name}" refers back to itself '
                             f"({' -> '.join((*stack, str(name)))})")
        part_path = path.parent / f"{name}.yaml"
        if not part_path.is_file():
            raise TraceError(f'{where}: "blend.{name}": unknown scenario {name!r}; known: '
                             f"{', '.join(_names_in(path.parent))}")
        part = _load(part_path, (*stack, str(name)))
        total = sum(k.weight for k in part.requests)
        for k in part.requests:
            kinds.append(dataclasses.replace(k, name=f"{part.name}/{k.name}",
                                             weight=w * k.weight / total))
        pairs.append((part.name, w))
    return tuple(kinds), tuple(pairs)


def _load(path: Path, stack: tuple[str, ...] = ()) -> Scenario:
    where = str(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as e:
        raise TraceError(f"{where}: cannot read scenario: {e.strerror or e}") from e
    except yaml.YAMLError as e:
        raise TraceError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a mapping of scenario fields, got "
                         f"{type(data).__name__}")
    _check_keys(data, _SCENARIO_KEYS, where)
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not name:
        raise TraceError(f'{where}: "name" must be a non-empty string, got {name!r}')
    stack = stack or (name,)
    if ("requests" in data) == ("blend" in data):
        raise TraceError(f'{where}: give exactly one of "requests" (a list of request kinds) '
                         'or "blend" (scenario name -> weight)')
    blend: tuple[tuple[str, float], ...] = ()
    if "requests" in data:
        reqs = data["requests"]
        if not isinstance(reqs, list) or not reqs:
            raise TraceError(f'{where}: "requests" must be a non-empty list of request kinds')
        requests = tuple(_request_kind(r, f"{where}: requests[{i}]") for i, r in enumerate(reqs))
        names = [k.name for k in requests]
        if len(set(names)) != len(names):
            raise TraceError(f'{where}: "requests" names a kind twice: {names}')
    else:
        requests, blend = _resolve_blend(data["blend"], where, path, stack)
    sources = data.get("sources", [])
    if not isinstance(sources, list) or not all(isinstance(s, str) for s in sources):
        raise TraceError(f'{where}: "sources" must be a list of strings')
    description = data.get("description", "")
    if not isinstance(description, str):
        raise TraceError(f'{where}: "description" must be a string')
    return Scenario(
        name=name, description=" ".join(description.split()),
        batch_size=_int(data.get("batch_size"), where, "batch_size", minimum=1),
        decode_steps=_int(data.get("decode_steps"), where, "decode_steps", minimum=0),
        requests=requests, blend=blend, sources=tuple(sources),
    )


def _names_in(folder: Path) -> list[str]:
    return sorted(p.stem for p in folder.glob("*.yaml"))


def list_scenarios() -> list[str]:
    """Names of the bundled scenarios (files in ``scenarios/``)."""
    return _names_in(SCENARIOS_DIR)


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate one scenario file; raises TraceError naming the file and field."""
    return _load(Path(path))


def get_scenario(name_or_path: str | Path) -> Scenario:
    """A bundled scenario by name (``docvqa``), or a scenario file by path."""
    text = str(name_or_path)
    if text.endswith((".yaml", ".yml")) or "/" in text:
        return load_scenario(text)
    path = SCENARIOS_DIR / f"{text.lower()}.yaml"
    if not path.is_file():
        raise TraceError(f"unknown scenario {text!r}; known: {', '.join(list_scenarios())}")
    return load_scenario(path)
