"""Synthetic-traffic scenarios: what requests a serving engine sees, read from
``scenarios/*.yaml``.

A scenario is the traffic half of a synthetic trace (the routing half is
``RoutingKnobs``): which kinds of request arrive and in what proportion, how many image,
video and text tokens each kind brings, how many requests share a prefill batch and how
many decode steps follow it. Files are read with the bounded loader of
``macssim._validate`` and validated on load: every number finite and in range, every
count an integer within ``Limits`` (a prefill step holds at most
``Limits.MAX_TOKENS_PER_STEP`` tokens, so no synthetic step asks for more memory than a
real 1M-token prefill); every error names the file and the field. A scenario may also be a
weighted ``blend`` of other scenarios (``mixed``), without cycles, at most
``MAX_BLEND_DEPTH`` deep.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macssim._errors import TraceError
from macssim._resources import SCENARIOS_DIR
from macssim._validate import Limits, brief, check_int, check_number, check_text, load_yaml

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


WEIGHT_RANGE = (1e-6, 1e6)
"""A weight in a file (request kind or blend part) is relative: within 12 orders of
magnitude of another, and never so small that scaling it in a blend rounds it to 0."""
MAX_REQUEST_KINDS = 1024
"""Request kinds in one scenario, a blend's resolved kinds included."""
MAX_BLEND_DEPTH = 8
"""Blends of blends, nested at most this deep."""
MAX_BLEND_FILES = 256
"""Scenario files one load may read through its blends (a diamond of blends would
otherwise read the same files exponentially often)."""
_MAX_NAME = 200
_MAX_DESCRIPTION = 10_000
_MAX_SOURCES = 100
_MAX_SOURCE_LEN = 2_000
_BLEND_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,199}")
"""A blend part is a scenario file beside the blend: a plain file stem, no path."""


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
        where = f"request kind {brief(self.name)}"
        # A blend scales its parts' weights, so a resolved weight may be far below
        # WEIGHT_RANGE[0]; it stays finite and > 0.
        check_text(self.name, where, "kind", max_len=_MAX_NAME * (MAX_BLEND_DEPTH + 2),
                   error=TraceError)
        check_number(self.weight, where, "weight", low=0.0, low_open=True,
                     high=WEIGHT_RANGE[1], error=TraceError)
        for name in ("image_tokens", "video_tokens", "text_tokens"):
            _range(getattr(self, name), where, name)
        check_number(self.redundant_frac, where, "redundant_frac", low=0.0, high=1.0,
                     error=TraceError)
        _at_least_one_token(self.image_tokens, self.video_tokens, self.text_tokens, where)

    @property
    def max_prompt_tokens(self) -> int:
        return self.image_tokens[1] + self.video_tokens[1] + self.text_tokens[1]

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
        where = f"scenario {brief(self.name)}"
        check_text(self.name, where, "name", max_len=_MAX_NAME, error=TraceError)
        _batch_size(self.batch_size, where)
        _decode_steps(self.decode_steps, where)
        if (not isinstance(self.requests, tuple) or not self.requests
                or not all(isinstance(k, RequestKind) for k in self.requests)):
            raise TraceError(f'{where}: "requests" must be a non-empty tuple of RequestKind')
        _check_kind_count(len(self.requests), where)
        _check_prefill(self.batch_size, self.requests, where)

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
        where = f"scenario {brief(self.name)}"
        values = {}
        if batch_size is not None:
            values["batch_size"] = _batch_size(batch_size, where)
        if decode_steps is not None:
            values["decode_steps"] = _decode_steps(decode_steps, where)
        return dataclasses.replace(self, **values)

    def to_dict(self) -> dict[str, Any]:
        """Every resolved setting, JSON-ready (recorded in a trace's provenance)."""
        data = dataclasses.asdict(self)
        data["requests"] = [dataclasses.asdict(k) for k in self.requests]
        data["blend"] = {name: w for name, w in self.blend}
        return data


# -- validation helpers ------------------------------------------------------------------
def _batch_size(value: Any, where: str) -> int:
    return check_int(value, where, "batch_size", low=1, high=Limits.MAX_BATCH, error=TraceError)


def _decode_steps(value: Any, where: str) -> int:
    return check_int(value, where, "decode_steps", low=0, high=Limits.MAX_STEPS,
                     error=TraceError)


def _weight(value: Any, where: str, name: str) -> float:
    return check_number(value, where, name, low=WEIGHT_RANGE[0], high=WEIGHT_RANGE[1],
                        error=TraceError)


def _range(value: Any, where: str, name: str) -> tuple[int, int]:
    """``[min, max]`` token counts per request: integers, 0 <= min <= max <= the tokens one
    step may hold."""
    if value is None:
        return (0, 0)
    high = Limits.MAX_TOKENS_PER_STEP
    good = (isinstance(value, list | tuple) and len(value) == 2
            and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            and 0 <= value[0] <= value[1] <= high)
    if not good:
        raise TraceError(f'{where}: "{name}" must be [min, max] integers with '
                         f"0 <= min <= max <= {high}, got {brief(value)}")
    return (int(value[0]), int(value[1]))


def _at_least_one_token(image: tuple[int, int], video: tuple[int, int], text: tuple[int, int],
                        where: str) -> None:
    if image[0] + video[0] + text[0] < 1:
        raise TraceError(f'{where}: a request must hold at least one token: the minimums of '
                         '"image_tokens", "video_tokens" and "text_tokens" sum to 0')


def _check_kind_count(count: int, where: str) -> None:
    if count > MAX_REQUEST_KINDS:
        raise TraceError(f"{where}: {count} request kinds (a blend's included); at most "
                         f"{MAX_REQUEST_KINDS} are supported")


def _check_prefill(batch_size: int, requests: tuple[RequestKind, ...], where: str) -> None:
    """A prefill step holds every prompt token of a batch: at most MAX_TOKENS_PER_STEP, so
    that no step is ever built larger than a real 1M-token prefill."""
    largest = max(k.max_prompt_tokens for k in requests)
    if batch_size * largest > Limits.MAX_TOKENS_PER_STEP:
        raise TraceError(
            f'{where}: "batch_size" {batch_size} × the longest prompt a request may have '
            f"({largest} tokens) = {batch_size * largest} tokens in one prefill step; at most "
            f"{Limits.MAX_TOKENS_PER_STEP} are supported: lower the batch size or the token "
            "ranges")


def _check_keys(data: dict, known: tuple[str, ...], where: str) -> None:
    if not all(isinstance(k, str) for k in data):
        raise TraceError(f"{where}: field names must be strings, got "
                         f"{brief([k for k in data if not isinstance(k, str)])}")
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise TraceError(f"{where}: unknown field(s) {brief(unknown)}; known: {list(known)}")


def _request_kind(data: Any, where: str) -> RequestKind:
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a mapping with fields {list(_KIND_KEYS)}, "
                         f"got {brief(data)}")
    _check_keys(data, _KIND_KEYS, where)
    if "kind" not in data:
        raise TraceError(f'{where}: missing field "kind" (the request kind\'s name)')
    name = check_text(data["kind"], where, "kind", max_len=_MAX_NAME, error=TraceError)
    ranges = {field: _range(data.get(field), where, field)
              for field in ("image_tokens", "video_tokens", "text_tokens")}
    _at_least_one_token(*ranges.values(), where)
    return RequestKind(
        name=name,
        weight=_weight(data.get("weight", 1.0), where, "weight"),
        redundant_frac=check_number(data.get("redundant_frac", DEFAULT_REDUNDANT_FRAC), where,
                                    "redundant_frac", low=0.0, high=1.0, error=TraceError),
        **ranges,
    )


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte
        return False


class _Budget:
    """Scenario files one top-level load may still read through blends."""

    def __init__(self) -> None:
        self.left = MAX_BLEND_FILES


def _resolve_blend(data: Any, where: str, path: Path, stack: tuple[str, ...],
                   budget: _Budget) -> tuple[tuple[RequestKind, ...],
                                             tuple[tuple[str, float], ...]]:
    """Turn ``{scenario: weight}`` into the blended scenarios' request kinds, each kind's
    weight scaled so that the scenario gets its share of requests."""
    if not isinstance(data, dict) or not data:
        raise TraceError(f'{where}: "blend" must map scenario names to weights, got '
                         f"{brief(data)}")
    kinds: list[RequestKind] = []
    pairs: list[tuple[str, float]] = []
    for name, weight in data.items():
        if not isinstance(name, str) or not _BLEND_NAME.fullmatch(name):
            raise TraceError(f'{where}: "blend" keys must be scenario names (a file stem '
                             f"beside this file: letters, digits, '_', '-', '.'), got "
                             f"{brief(name)}")
        field = f"blend.{name}"
        w = _weight(weight, where, field)
        if name in stack:
            raise TraceError(f'{where}: "{field}" refers back to itself '
                             f"({' -> '.join((*stack, name))})")
        if len(stack) >= MAX_BLEND_DEPTH:
            raise TraceError(f'{where}: "{field}": blends nest more than {MAX_BLEND_DEPTH} '
                             f"deep ({' -> '.join((*stack, name))})")
        part_path = path.parent / f"{name}.yaml"
        if not _is_file(part_path):
            raise TraceError(f'{where}: "{field}": unknown scenario {name!r}; known: '
                             f"{_listing(_names_in(path.parent))}")
        try:
            part = _load(part_path, (*stack, name), budget)
        except TraceError as e:
            if str(e).startswith(f"{where}:"):
                raise
            raise TraceError(f'{where}: "{field}": {e}') from e
        total = sum(k.weight for k in part.requests)
        for k in part.requests:
            kinds.append(dataclasses.replace(k, name=f"{part.name}/{k.name}",
                                             weight=w * k.weight / total))
        _check_kind_count(len(kinds), where)
        pairs.append((part.name, w))
    return tuple(kinds), tuple(pairs)


def _load(path: Path, stack: tuple[str, ...] = (), budget: _Budget | None = None) -> Scenario:
    where = str(path)
    budget = budget or _Budget()
    if budget.left <= 0:
        raise TraceError(f"{where}: reading it would read more than {MAX_BLEND_FILES} "
                         "scenario files through blends; flatten the blend")
    budget.left -= 1
    data = load_yaml(path, what="scenario", error=TraceError)
    if not isinstance(data, dict):
        raise TraceError(f"{where}: expected a mapping of scenario fields, got "
                         f"{brief(data)}")
    _check_keys(data, _SCENARIO_KEYS, where)
    name = check_text(data.get("name", path.stem), where, "name", max_len=_MAX_NAME,
                      error=TraceError)
    stack = stack or (name,)
    if ("requests" in data) == ("blend" in data):
        raise TraceError(f'{where}: give exactly one of "requests" (a list of request kinds) '
                         'or "blend" (scenario name -> weight)')
    batch_size = _batch_size(data.get("batch_size"), where)
    decode_steps = _decode_steps(data.get("decode_steps"), where)
    blend: tuple[tuple[str, float], ...] = ()
    if "requests" in data:
        reqs = data["requests"]
        if not isinstance(reqs, list) or not reqs:
            raise TraceError(f'{where}: "requests" must be a non-empty list of request kinds, '
                             f"got {brief(reqs)}")
        _check_kind_count(len(reqs), where)
        requests = tuple(_request_kind(r, f"{where}: requests[{i}]") for i, r in enumerate(reqs))
        names = [k.name for k in requests]
        if len(set(names)) != len(names):
            raise TraceError(f'{where}: "requests" names a kind twice: {brief(names)}')
    else:
        requests, blend = _resolve_blend(data["blend"], where, path, stack, budget)
    _check_prefill(batch_size, requests, where)
    sources = data.get("sources", [])
    if (not isinstance(sources, list) or len(sources) > _MAX_SOURCES
            or not all(isinstance(s, str) and len(s) <= _MAX_SOURCE_LEN for s in sources)):
        raise TraceError(f'{where}: "sources" must be a list of at most {_MAX_SOURCES} strings '
                         f"of at most {_MAX_SOURCE_LEN} characters, got {brief(sources)}")
    description = data.get("description", "")
    if not isinstance(description, str) or len(description) > _MAX_DESCRIPTION:
        raise TraceError(f'{where}: "description" must be a string of at most '
                         f"{_MAX_DESCRIPTION} characters, got {brief(description)}")
    try:
        return Scenario(
            name=name, description=" ".join(description.split()),
            batch_size=batch_size, decode_steps=decode_steps,
            requests=requests, blend=blend, sources=tuple(sources),
        )
    except TraceError as e:  # every check above ran first; name the file all the same
        raise TraceError(f"{where}: {e}") from e


def _listing(names: list[str], most: int = 20) -> str:
    """Names for a message: a folder of a thousand files does not make a page of text."""
    shown = ", ".join(brief(n)[1:-1] for n in names[:most])
    return shown + (f", … ({len(names) - most} more)" if len(names) > most else "")


def _names_in(folder: Path) -> list[str]:
    try:
        return sorted(p.stem for p in folder.glob("*.yaml"))
    except OSError:
        return []


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
    if not _is_file(path):
        raise TraceError(f"unknown scenario {brief(text)}; known: {', '.join(list_scenarios())}")
    return load_scenario(path)
