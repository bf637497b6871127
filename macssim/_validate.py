"""The one gate every untrusted input passes: trace headers and records, topology and
scenario YAML, imported engine dumps, command-line values.

Why a module of its own: a file from a stranger can claim a billion experts, an ``inf``
link latency or a YAML alias bomb, and each of those must be refused *before* anything is
allocated or walked, with a message that names the file, the field and what was
expected. Putting the checks and the limits in one place keeps every reader equally
strict and every message alike: ``topologies/x.yaml: "nvlink.latency_s" must be a
finite number >= 0, got inf``.

Limits are generous for real deployments (the largest open MoE models have a few hundred
experts per layer; the largest EP deployments a few hundred GPUs) and small enough that a
claim at the limit still fits in this machine's memory.
"""

from __future__ import annotations

import json
import math
import os
import re
import reprlib
import stat
from pathlib import Path
from typing import Any

import yaml

from macssim._errors import MacssimError

__all__ = [
    "LIMITS",
    "Limits",
    "brief",
    "check_choice",
    "check_int",
    "check_number",
    "check_text",
    "cuda_problem",
    "finite_range_text",
    "load_json",
    "load_yaml",
    "mapping",
    "read_bounded",
]


class Limits:
    """Upper bounds on what an input may claim, each with the reason it holds."""

    MAX_EXPERTS = 16_384
    """Routed experts per MoE layer (DeepSeek-V3: 256, Qwen3-Next: 512)."""
    MAX_TOP_K = 64
    """Experts per token (real routers use 1 to 16)."""
    MAX_LAYERS = 1_024
    """Decoder layers (the deepest open models have under 200)."""
    MAX_HIDDEN = 1 << 20
    """Width of the residual stream, intermediate sizes, head counts, vocabulary."""
    MAX_TOKENS_PER_STEP = 1 << 20
    """Tokens one forward step may hold (a 1M-token prefill)."""
    MAX_BATCH = 1 << 16
    """Requests in one batch or scenario (a step larger than this is no serving batch)."""
    MAX_STEPS = 1 << 20
    """Steps in one trace or synthetic run."""
    MAX_GPUS = 1_024
    """GPUs in one topology: the flow network holds O(GPUs²) routes in memory."""
    MAX_GPUS_PER_NODE = 72
    """GPUs behind one NVLink domain (GB200 NVL72)."""
    MAX_YAML_BYTES = 1 << 20
    """A topology or scenario file is a page of figures, not megabytes."""
    MAX_YAML_NODES = 100_000
    """YAML nodes after alias expansion: refuses "billion laughs" alias bombs."""
    MAX_YAML_DEPTH = 64
    """Nesting of YAML collections. PyYAML's scanner is quadratic in the nesting of flow
    collections (``[[[[…``: 20,000 deep takes 2 s, a 1 MB file of them half an hour)."""
    MAX_JSON_BYTES = 64 << 20
    """One JSON blob inside a trace (header, step metadata, index)."""
    MAX_CAPACITY_FACTOR = 1e6
    """γ of a capacity policy: γ >= E/k already keeps everything (E/k <= 16,384 here), and
    ceil(γ·T·k/E) at the limit still fits an int64."""
    MAX_SEED = (1 << 63) - 1
    """A random seed: what int64 (torch.manual_seed, JSON readers) holds."""
    MAX_STEP_PAYLOAD_BYTES = 4 << 30
    """One trace step's arrays after decompression: a reader holds a step (and its
    widened copies) in memory; a 16k-token prefill of a 48-layer, 128-expert model with
    scores is ~0.4 GB."""
    MAX_ZSTD_WINDOW_BYTES = 1 << 27
    """The window a zstd-compressed trace step may ask its reader to hold: zstd's own
    default limit for decoders (window log 27); macssim's writers (level 3) ask for 2 MB."""
    MAX_IMPORT_BYTES = 1 << 30
    """An engine export to import (vLLM .npy/.npz uncompressed, .jsonl): ~100M
    token-layer routing slots; each JSON document in it is also held to MAX_JSON_BYTES."""
    MAX_TABLE_BYTES = 512 << 20
    """A cost table file: aiconfigurator-core's largest H100 table (126k fused-MoE rows) is
    ~15 MB as CSV; 512 MB is room for a far larger sweep, and still fits in memory."""
    MAX_SIZE_KEY = 1 << 50
    """A size key of a cost table (tokens, bytes, m/n/k): 1 PiB; larger is a unit mistake."""


LIMITS = Limits()

_repr = reprlib.Repr()
_repr.maxstring = 60
_repr.maxother = 60
_repr.maxlist = 6
_repr.maxdict = 6
_repr.maxlevel = 2


def brief(value: Any) -> str:
    """A bounded repr for messages: never megabytes, never a walk of an alias bomb."""
    return _repr.repr(value)


def _fail(error: type[MacssimError], where: str, field: str, expected: str, value: Any) -> None:
    field_part = f'"{field}" ' if field else ""
    raise error(f"{where}: {field_part}must be {expected}, got {brief(value)}")


def check_number(value: Any, where: str, field: str, *, low: float | None = None,
                 high: float | None = None, low_open: bool = False, high_open: bool = False,
                 error: type[MacssimError] = MacssimError) -> float:
    """A finite real number in [low, high] (``low_open`` / ``high_open`` exclude a bound);
    bools are refused, since YAML's ``yes`` is not a number."""
    expected = finite_range_text(low, high, low_open=low_open, high_open=high_open)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        _fail(error, where, field, expected, value)
    try:
        number = float(value)
    except OverflowError:  # an int too large for a float
        _fail(error, where, field, expected, value)
    if not math.isfinite(number):
        _fail(error, where, field, expected, value)
    if low is not None and (number <= low if low_open else number < low):
        _fail(error, where, field, expected, value)
    if high is not None and (number >= high if high_open else number > high):
        _fail(error, where, field, expected, value)
    return number


def check_int(value: Any, where: str, field: str, *, low: int | None = None,
              high: int | None = None, error: type[MacssimError] = MacssimError) -> int:
    """An integer in [low, high]. ``8.0`` is refused: a shape or a count given as a float
    is a sign that the file was not written for this field."""
    if isinstance(value, bool) or not isinstance(value, int) or \
            (low is not None and value < low) or (high is not None and value > high):
        # Built only on failure (a trace reader calls this per field of every step), and
        # with the bounds written exactly: 1048576, not 1.04858e+06.
        parts = ([f">= {low}"] if low is not None else []) + \
            ([f"<= {high}"] if high is not None else [])
        _fail(error, where, field, "an integer" + (" " + " and ".join(parts) if parts else ""),
              value)
    return int(value)


def check_text(value: Any, where: str, field: str, *, max_len: int = 200,
               error: type[MacssimError] = MacssimError) -> str:
    """A non-empty string of at most ``max_len`` characters, stripped."""
    if not isinstance(value, str) or not value.strip() or len(value) > max_len:
        _fail(error, where, field, f"a non-empty string of at most {max_len} characters",
              value)
    return value.strip()


def check_choice(value: Any, where: str, field: str, choices: tuple[str, ...], *,
                 error: type[MacssimError] = MacssimError) -> str:
    if not isinstance(value, str) or value not in choices:
        _fail(error, where, field, f"one of {list(choices)}", value)
    return value


def finite_range_text(low: float | None = None, high: float | None = None, *,
                      low_open: bool = False, high_open: bool = False) -> str:
    """What a finite-number check accepts, in the words every message uses:
    ``a finite number > 0 and <= 1e+06``."""
    parts = []
    if low is not None:
        parts.append(f"{'>' if low_open else '>='} {low:g}")
    if high is not None:
        parts.append(f"{'<' if high_open else '<='} {high:g}")
    return "a finite number" + (" " + " and ".join(parts) if parts else "")


# ---------------------------------------------------------------------------------------
# YAML and JSON


class _BoundedLoader(yaml.SafeLoader):
    """PyYAML's safe loader (no python/* tags) that counts nodes as aliases expand them.

    A "billion laughs" file is a few hundred bytes whose aliases expand to 10⁹ nodes:
    ``safe_load`` builds it quickly as shared references, but anything that walks the
    result (a validator, a repr in an error message) never finishes. Counting the
    expanded size of the composed node graph refuses it before construction."""

    def compose_document(self):  # noqa: D401 - PyYAML's hook
        node = super().compose_document()
        _expanded_size(node, {}, limit=Limits.MAX_YAML_NODES)
        return node

    def fetch_flow_collection_start(self, TokenClass):  # noqa: N803 - PyYAML's hook
        if self.flow_level >= Limits.MAX_YAML_DEPTH:
            raise _TooDeep
        super().fetch_flow_collection_start(TokenClass)

    def add_indent(self, column):  # PyYAML's hook: one more level of block nesting
        if len(self.indents) >= Limits.MAX_YAML_DEPTH:
            raise _TooDeep
        return super().add_indent(column)


# PyYAML reads YAML 1.1, where ``450e9`` (no dot) is a string; hardware figures are
# written that way, so resolve YAML 1.2 floats as floats.
_BoundedLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                   |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                   |\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                   |[-+]?\.(?:inf|Inf|INF)
                   |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."),
)


class _TooLarge(Exception):
    pass


class _TooDeep(Exception):
    pass


def _expanded_size(node: yaml.Node, memo: dict[int, int], *, limit: int) -> int:
    """Nodes the document holds once every alias is copied in place (memoised per node,
    so computing it costs the size of the graph, not of the expansion)."""
    key = id(node)
    if key in memo:
        return memo[key]
    memo[key] = limit + 1  # a cycle (a recursive alias) counts as too large
    size = 1
    if isinstance(node, yaml.SequenceNode):
        for child in node.value:
            size += _expanded_size(child, memo, limit=limit)
            if size > limit:
                raise _TooLarge
    elif isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            size += _expanded_size(k, memo, limit=limit) + _expanded_size(v, memo, limit=limit)
            if size > limit:
                raise _TooLarge
    memo[key] = size
    return size


def cuda_problem(name: str) -> str | None:
    """Why ``cuda`` / ``cuda:N`` is not a GPU this torch can use, or None. Imports torch
    (only when asked): the one check behind every ``--device``."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        return f"no CUDA GPU is visible to torch {torch.__version__} (CUDA is not available)"
    index = int(name.partition(":")[2] or 0)
    if index >= count:
        return (f"torch sees {count} CUDA GPU{'s' if count > 1 else ''}, "
                f"cuda:0 to cuda:{count - 1}")
    return None


def read_bounded(fh, limit: int) -> bytes:
    """Up to ``limit + 1`` bytes of an open binary file (one more than allowed, so the
    caller can tell "too large"), allocating only what is there: ``read(n)`` reserves
    ``n`` bytes up front, so it is sized from the file's own length where it has one."""
    info = os.fstat(fh.fileno())
    if stat.S_ISREG(info.st_mode):
        return fh.read(min(info.st_size, limit) + 1)
    out = bytearray()
    while len(out) <= limit and (chunk := fh.read(min(1 << 16, limit + 1 - len(out)))):
        out += chunk
    return bytes(out)


def load_yaml(path: str | Path, *, what: str, error: type[MacssimError]) -> Any:
    """Read one YAML document safely: bounded file size, bounded alias expansion, no
    python tags, plain data out. ``what`` names the file kind in messages ("topology")."""
    where = str(path)
    try:
        with open(path, "rb") as f:  # read at most the limit (a /dev/zero never ends)
            raw = read_bounded(f, Limits.MAX_YAML_BYTES)
    except (OSError, ValueError) as e:  # ValueError: a NUL byte in the path
        raise error(f"{where}: cannot read {what} file "
                    f"({getattr(e, 'strerror', None) or e})") from e
    if len(raw) > Limits.MAX_YAML_BYTES:
        raise error(f"{where}: a {what} file may be at most {Limits.MAX_YAML_BYTES} bytes "
                    "(it is a page of figures)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise error(f"{where}: not UTF-8 text ({e.reason} at byte {e.start})") from e
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a SafeLoader subclass
    except _TooLarge:
        raise error(f"{where}: YAML aliases expand to more than {Limits.MAX_YAML_NODES} "
                    "nodes (an alias bomb?); write the values out") from None
    except _TooDeep:
        raise error(f"{where}: YAML collections nest more than {Limits.MAX_YAML_DEPTH} "
                    "deep") from None
    except yaml.YAMLError as e:
        raise error(f"{where}: not valid YAML ({_one_line(e)})") from e
    except (RecursionError, ValueError, OverflowError) as e:
        raise error(f"{where}: not valid YAML ({type(e).__name__}: {brief(str(e))})") from None


def load_json(blob: bytes, where: str, *, what: str,
              error: type[MacssimError] = MacssimError) -> Any:
    """Parse one JSON blob of a file, refusing NaN/Infinity constants and absurd nesting."""
    if len(blob) > Limits.MAX_JSON_BYTES:
        raise error(f"{where}: {what} is {len(blob)} bytes, at most {Limits.MAX_JSON_BYTES} "
                    "allowed")
    try:
        return json.loads(blob, parse_constant=_refuse_constant)
    except (ValueError, RecursionError) as e:
        raise error(f"{where}: {what} is not valid JSON ({brief(str(e))})") from None


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not a JSON number")


def _one_line(e: Exception) -> str:
    return " ".join(str(e).split())[:300]


def mapping(value: Any, where: str, section: str, *,
            error: type[MacssimError] = MacssimError) -> dict:
    """A mapping with string keys, or an error naming the section."""
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise error(f'{where}: "{section or "top level"}" must be a mapping with named '
                    f"fields, got {brief(value)}")
    return value

