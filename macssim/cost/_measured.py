"""The measured cost backend: per-operation latencies from tables, the roofline elsewhere.

Why a table where one exists: the roofline's kernel effects (tile padding, small-expert
efficiency, fixed kernel costs; ``_roofline.GroupedGemm``) are assumptions, while a
measured table (aiconfigurator-core's, or a user's, in macssim's format:
docs/cost-tables.md) is what the kernels did on the hardware. Why the roofline elsewhere:
a replay must not stop because one operation's shape was never measured (the LM head of
a 152k vocabulary is wider than any measured GEMM), and must not guess either, so every
query outside the tables is answered by the roofline and counted, with its reason, in
:meth:`MeasuredCosts.coverage`, which replay records in ``run.json``.

What answers what:

- **dense GEMMs** (``gemm`` table): attention projections (QKV: m = the GPU's tokens,
  n = (heads + 2·KV heads)·head_dim, k = hidden; output: n = hidden, k = heads·head_dim),
  the dense MLP and shared experts (gate and up fused, as TensorRT-LLM, vLLM and SGLang
  run them: n = 2·I, k = hidden; down: n = hidden, k = I), the LM head (m = requests,
  n = vocab, k = hidden). Each GEMM is looked up on its own; a phase is their sum.
- **routed experts** (``moe`` table, a fused MoE layer on one EP rank): aiconfigurator's
  collector feeds one GPU ``tokens`` tokens routed over *all* experts and times the rank's
  share (``experts / ep`` local experts); balanced, that share is ``tokens · topk / ep``
  rows. A GPU holding R kept rows is therefore looked up at ``tokens = R · ep / topk``
  (``ep`` = the topology's GPUs), at ``distribution = balanced``, and the result scaled by
  the roofline's per-expert shape: ``roofline(actual rows) / roofline(the same R rows
  spread evenly over the rank's experts)`` (docs/cost-tables.md says why).
- **attention core** (QKᵀ, PV, KV cache) and **vision encoder**: the roofline (no
  measured table converted yet).
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from macssim._errors import CostError, TopologyError
from macssim.cost import _roofline
from macssim.cost._interpolate import MAX_EXTRAPOLATION, predict_detail
from macssim.cost._precision import (
    Precision,
)
from macssim.cost._table import CostTable, load_table
from macssim.hardware import GpuSpec, Topology
from macssim.trace import ModelFacts

__all__ = ["COSTS_CHOICES", "MeasuredCosts", "TABLE_DTYPES", "cost_model_for",
           "load_tables_dir"]

COSTS_CHOICES = ("auto", "measured", "roofline")
"""``replay --costs``: ``auto`` (measured where tables are found, else the roofline, said
once), ``measured`` (tables required: an error without them), ``roofline``."""

TABLE_OPS = ("gemm", "moe")
"""The tables the measured backend reads (``macssim cost convert`` writes them as
``gemm.csv`` and ``moe.csv``, beside ``nccl.csv`` and ``deepep.csv``)."""

TABLE_DTYPES = {"bf16": "bfloat16", "fp8": "fp8_block"}
"""macssim precision -> the tables' dtype. macssim's FP8 is block-wise (per-token groups
of 128 with fp32 scales, ``_precision``), which is aiconfigurator's ``fp8_block``, not
its per-tensor ``fp8``."""

DISTRIBUTION = "balanced"
"""The MoE table's token distribution the skew correction starts from."""

_ROOFLINE_ONLY = "no measured table for this operation (roofline by design)"


class MeasuredCosts:
    """A :class:`~macssim.cost.CostModel` answering from measured ``gemm`` and ``moe``
    tables of one (system, framework, version), the roofline where they do not reach.

    Args:
        tables: op -> table (``gemm``, ``moe``; either may be absent, and may hold other
            systems' rows too: only those matching ``system``/``framework``/``version``
            are used).
        system, framework, version: which measurements (a topology's ``cost_tables``).
        ep: expert-parallel ranks the MoE table is looked up at (the topology's GPUs).
        source: where the tables came from, for the record.
    """

    name = "measured"

    def __init__(self, tables: dict[str, CostTable], *, system: str, framework: str,
                 version: str, ep: int, source: str = "") -> None:
        self.tables = dict(tables)
        self.system, self.framework, self.version = system, framework, version
        self.ep = int(ep)
        self.source = source
        self._sub: dict[tuple, tuple[CostTable | None, str]] = {}
        self._memo: dict[tuple, tuple[float | None, str]] = {}
        # operation -> Counter of "table" / "table (extrapolated …)" / "roofline: reason"
        self._counts: dict[str, Counter] = {}

    # -- the CostModel protocol --------------------------------------------------------

    def attention_s(self, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                    kv_read: np.ndarray, context_sum: np.ndarray,
                    precision: Precision) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.float64)
        h = model.hidden_size
        q = model.num_attention_heads * model.head_dim
        kv = model.num_kv_heads * model.head_dim
        dt = precision.linear
        proj = np.zeros(tokens.shape)
        for op, n, k in (("attention_qkv", q + 2 * kv, h), ("attention_out", h, q)):
            proj += self._gemm_phase(op, model.bytes_per_element, gpu, tokens, n, k, dt)
        core = _roofline.attention_core_s(model, gpu, tokens, kv_read, context_sum)
        self._count("attention_core", int((core > 0).sum()), "roofline: " + _ROOFLINE_ONLY)
        return proj + core

    def dense_mlp_s(self, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                    precision: Precision) -> np.ndarray:
        inter = model.dense_intermediate_size
        tokens = np.asarray(tokens, dtype=np.float64)
        if inter <= 0:
            return np.zeros(tokens.shape)
        return self._swiglu("dense_mlp", model, gpu, tokens, inter, precision.linear)

    def vision_s(self, model: ModelFacts, gpu: GpuSpec, vision_tokens: np.ndarray
                 ) -> np.ndarray:
        out = _roofline.vision_s(model, gpu, vision_tokens)
        self._count("vision", int((np.asarray(vision_tokens) > 0).sum()),
                    "roofline: " + _ROOFLINE_ONLY)
        return out

    def head_s(self, model: ModelFacts, gpu: GpuSpec, requests: np.ndarray,
               precision: Precision) -> np.ndarray:
        requests = np.asarray(requests, dtype=np.float64)
        return self._gemm_phase("lm_head", model.bytes_per_element, gpu, requests, model.vocab_size,
                                model.hidden_size, precision.linear,
                                fallback=_roofline.head_s(model, gpu, requests, precision))

    def shared_experts_s(self, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                         precision: Precision) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.float64)
        if model.num_shared_experts <= 0:
            return np.zeros(tokens.shape)
        inter = (model.shared_intermediate_size or model.expert_intermediate_size) \
            * model.num_shared_experts
        return self._swiglu("shared_experts", model, gpu, tokens, inter, precision.experts)

    def expert_phase_s(self, model: ModelFacts, gpu: GpuSpec, tokens_per_expert: np.ndarray,
                       precision: Precision) -> np.ndarray:
        rows = np.asarray(tokens_per_expert)
        roof = _roofline.expert_phase_s(model, gpu, rows, precision=precision)
        local = max(1, model.num_experts // self.ep)
        total = rows.sum(axis=1).astype(np.int64)
        # The same total rows spread as evenly as integers allow over the rank's experts.
        even = (total[:, None] // local
                + (np.arange(local)[None, :] < (total % local)[:, None])).astype(np.int64)
        roof_even = _roofline.expert_phase_s(model, gpu, even, precision=precision)
        out = roof.copy()
        dtype = TABLE_DTYPES[precision.experts]
        keys = dict(hidden=model.hidden_size, inter=model.expert_intermediate_size,
                    experts=model.num_experts, topk=model.top_k, tp=1, ep=self.ep)
        for g, r in enumerate(total.tolist()):
            if r <= 0:
                self._count("experts", 1, "roofline: no rows (the fixed kernel cost only)")
                continue
            level, how = self._lookup("moe", dtype, keys, {"tokens": r * self.ep / model.top_k})
            self._count("experts", 1, how)
            if level is not None:
                out[g] = level * roof[g] / roof_even[g]
        return out

    def gemm_s(self, gpu: GpuSpec, m: np.ndarray, n: int, k: int, dtype: str = "bf16"
               ) -> np.ndarray:
        """[G] one GEMM [m, k] x [k, n] per GPU from the gemm table (the roofline's
        ``gemm_s`` outside it; BF16 activations)."""
        return self._gemm_phase("gemm", 2.0, gpu, np.asarray(m, dtype=np.float64), n, k, dtype)

    def coverage(self) -> dict[str, Any]:
        """What answered each operation so far: ``{"backend", "tables": {system,
        framework, version, source}, "operations": {op: {"table": n, "roofline: why": n,
        …}}}``, counted per GPU and call (a GPU with nothing to do is not counted)."""
        return {"backend": self.name,
                "tables": {"system": self.system, "framework": self.framework,
                           "version": self.version, "source": self.source},
                "operations": {op: dict(sorted(c.items()))
                               for op, c in sorted(self._counts.items())}}

    # -- internals ---------------------------------------------------------------------

    def _count(self, op: str, n: int, how: str) -> None:
        if n:
            self._counts.setdefault(op, Counter())[how] += n

    def _swiglu(self, op: str, model: ModelFacts, gpu: GpuSpec, tokens: np.ndarray,
                inter: int, dtype: str) -> np.ndarray:
        h, act = model.hidden_size, model.bytes_per_element
        return (self._gemm_phase(op + "_gate_up", act, gpu, tokens, 2 * inter, h, dtype)
                + self._gemm_phase(op + "_down", act, gpu, tokens, h, inter, dtype))

    def _gemm_phase(self, op: str, act_bytes: float, gpu: GpuSpec, m: np.ndarray, n: int,
                    k: int, dtype: str, fallback: np.ndarray | None = None) -> np.ndarray:
        """[G] seconds of one GEMM (m × k)·(k × n) per GPU; m = 0 costs nothing. Outside
        the table: ``fallback`` (the roofline's own function for the phase, where it is one
        GEMM) or the roofline of this GEMM alone."""
        out = np.zeros(m.shape)
        for g, rows in enumerate(m.tolist()):
            if rows <= 0:
                continue
            level, how = self._lookup("gemm", TABLE_DTYPES[dtype], {},
                                      {"m": rows, "n": n, "k": k})
            self._count(op, 1, how)
            if level is not None:
                out[g] = level
            elif fallback is not None:
                out[g] = fallback[g]
            else:
                out[g] = float(_roofline.gemm_s(gpu, rows, n, k, dtype, act_bytes=act_bytes))
        return out

    def _subtable(self, op: str, dtype: str, exact: dict) -> tuple[CostTable | None, str]:
        """The rows of ``op`` for this system, framework, version, dtype and ``exact`` keys,
        one kernel (the one with most measurements where several were timed), or None and
        why."""
        key = (op, dtype, tuple(sorted(exact.items())))
        if key in self._sub:
            return self._sub[key]
        table = self.tables.get(op)
        if table is None:
            found: tuple[CostTable | None, str] = (None, f"roofline: no {op} table")
        else:
            want = dict(system=self.system, framework=self.framework, version=self.version,
                        dtype=dtype, **exact)
            if op == "moe":
                want["distribution"] = DISTRIBUTION
            try:
                sub = table.select(**want)
            except CostError:
                shown = ", ".join(f"{k}={v}" for k, v in want.items()
                                  if k not in ("system", "framework", "version"))
                found = (None, f"roofline: shape not measured ({shown})")
            else:
                kernels = sub.frame["kernel"].value_counts()
                best = sorted(kernels.index[kernels == kernels.max()])[0]
                found = (sub.select(kernel=best) if len(kernels) > 1 else sub, "table")
        self._sub[key] = found
        return found

    def _lookup(self, op: str, dtype: str, exact: dict, sizes: dict
                ) -> tuple[float | None, str]:
        """(seconds or None, how it was answered) for one query; memoised."""
        key = (op, dtype, tuple(sorted(exact.items())), tuple(sorted(sizes.items())))
        if key in self._memo:
            return self._memo[key]
        sub, how = self._subtable(op, dtype, exact)
        result: tuple[float | None, str]
        if sub is None:
            result = (None, how)
        else:
            try:
                p = predict_detail(sub, extrapolate=True, **sizes)
            except CostError:
                result = (None, "roofline: " + _outside(sub, sizes))
            else:
                latency = p.latency_s
                if p.exact:  # the value as written, unless the interpolator adjusted it
                    raw = _measured_value(sub, sizes)
                    latency = raw if math.isclose(raw, latency, rel_tol=1e-9) else latency
                result = (latency, f"table (extrapolated, at most {MAX_EXTRAPOLATION:g}× "
                          "beyond the measured range)" if p.extrapolated else "table")
        self._memo[key] = result
        return result


def _measured_value(sub: CostTable, sizes: dict) -> float:
    """A measured point as written in the table (the median of its repeats): the
    interpolator keeps log latencies, and exp(log t) need not give t back to the bit.
    Used only where it agrees with the interpolator's value (its rules may lower a point,
    docs/cost-tables.md section 3)."""
    frame = sub.frame
    mask = np.ones(len(frame), dtype=bool)
    for key, value in sizes.items():
        mask &= (frame[key] == float(value)).to_numpy()
    return float(np.median(frame["latency_s"].to_numpy()[mask]))


def _outside(sub: CostTable, sizes: dict) -> str:
    """Why a query on ``sub`` failed, in a form that does not depend on the exact value
    (so the coverage record stays a handful of lines)."""
    for key, value in sizes.items():
        values = sub.frame[key]
        lo, hi = float(values.min()), float(values.max())
        if not (lo / MAX_EXTRAPOLATION <= value <= hi * MAX_EXTRAPOLATION):
            side = "above" if value > hi else "below"
            shown = f"{key}={value:g}" if key != "tokens" and key != "m" else key
            return (f"{shown} {side} the measured {lo:g}…{hi:g} by more than "
                    f"{MAX_EXTRAPOLATION:g}×")
    return "no measurements bracket the shape"


# ------------------------------------------------------------------------------------
# Which cost model a run gets


def load_tables_dir(directory: str | os.PathLike) -> dict[str, CostTable]:
    """The ``gemm`` and ``moe`` tables of a directory in macssim's format (``gemm.csv``,
    ``moe.csv``, or ``.parquet``, as ``macssim cost convert`` writes them); either may be
    absent, and a directory with neither is refused."""
    root = Path(directory)
    if not root.is_dir():
        raise CostError(f"{root}: not a directory (--tables names a directory of cost "
                        f"tables: {', '.join(f'{op}.csv' for op in TABLE_OPS)}, as "
                        "macssim cost convert writes them)")
    tables = {}
    for op in TABLE_OPS:
        for suffix in (".csv", ".parquet"):
            path = root / f"{op}{suffix}"
            if path.is_file():
                table = load_table(path)
                if table.op != op:
                    raise CostError(f"{path}: holds a {table.op!r} table, expected {op!r}")
                tables[op] = table
                break
    if not tables:
        raise CostError(f"{root}: no cost tables ({' or '.join(f'{op}.csv' for op in TABLE_OPS)}"
                        "; macssim cost convert --system SYSTEM --out DIR writes them)")
    return tables


_CONVERTED: dict[tuple[str, str, str], dict[str, CostTable]] = {}
"""aiconfigurator-core's tables converted in this process, per (system, framework,
version): converting the GEMM table takes seconds, a replay may build several runs."""


def _aiconfigurator_installed() -> bool:
    try:
        return importlib.util.find_spec("aiconfigurator_core") is not None
    except (ImportError, ValueError):
        return False


def _held(tables: dict[str, CostTable]) -> str:
    """What a set of tables holds, as system/framework/version per op."""
    parts = []
    for op, table in sorted(tables.items()):
        triples = sorted({"/".join(map(str, t)) for t in
                          table.frame[["system", "framework", "version"]].itertuples(
                              index=False, name=None)})
        parts.append(f"{op}: {', '.join(triples)}")
    return "; ".join(parts)


def _holds(table: CostTable, system: str, framework: str, version: str) -> bool:
    f = table.frame
    return bool(((f["system"] == system) & (f["framework"] == framework)
                 & (f["version"] == version)).any())


def cost_model_for(topology: Topology, *, tables: str | os.PathLike | None = None,
                   costs: str = "auto") -> tuple[Any, dict[str, Any]]:
    """The cost model a replay on ``topology`` runs with, and what to record about the
    choice (``{"backend", "note"}``; ``note`` is None unless the user should be told).

    The topology's ``cost_tables`` names the tables; they come from ``tables`` (a
    directory in macssim's format) or, without it, from an installed aiconfigurator-core
    (converted in memory once per process). ``costs="auto"`` falls back to the roofline,
    with a note, where no tables are found; ``"measured"`` makes that an error;
    ``"roofline"`` never looks."""
    from macssim.cost._backend import ROOFLINE

    if costs not in COSTS_CHOICES:
        raise CostError(f'replay: "costs" must be one of {", ".join(COSTS_CHOICES)}, got '
                        f"{costs!r}")
    where = topology.source or f"topology {topology.name!r}"
    if costs == "roofline":
        return ROOFLINE, {"backend": "roofline", "note": None}
    spec = topology.cost_tables
    if spec is None:
        if costs == "measured" or tables is not None:
            raise TopologyError(f'{where}: "cost_tables" is not set, so the measured tables '
                                "to use are unknown; add cost_tables: {system: …, framework: "
                                "…, version: …} naming them (docs/cost-tables.md)")
        return ROOFLINE, {"backend": "roofline",
                          "note": f"costs: roofline ({where} names no cost_tables)"}
    triple = (spec.system, spec.framework, spec.version)
    named = "/".join(triple)
    if tables is not None:
        found = load_tables_dir(tables)
        usable = {op: t for op, t in found.items() if _holds(t, *triple)}
        if not usable:
            raise TopologyError(f'{where}: "cost_tables" names {named}, but {tables} holds '
                                f"{_held(found)} (convert them: macssim cost convert --system "
                                f"{spec.system} --out DIR)")
        source = str(tables)
    elif _aiconfigurator_installed():
        from macssim.cost._aiconfigurator import from_aiconfigurator

        if triple not in _CONVERTED:
            try:
                _CONVERTED[triple] = {op: from_aiconfigurator(op, *triple)
                                      for op in TABLE_OPS}
            except CostError as e:
                raise TopologyError(f'{where}: "cost_tables" names {named}, which the installed '
                                    f"aiconfigurator-core cannot give: {e}") from e
        usable = _CONVERTED[triple]
        source = "aiconfigurator-core (installed), converted in memory"
    else:
        if costs == "measured":
            raise CostError(f"costs measured: no tables for {named} ({where}): pass --tables "
                            "DIR (macssim cost convert writes one) or pip install "
                            "aiconfigurator-core")
        return ROOFLINE, {"backend": "roofline",
                          "note": f"costs: roofline (no measured tables for {named}: "
                          "aiconfigurator-core is not installed and no --tables DIR given)"}
    model = MeasuredCosts(usable, system=spec.system, framework=spec.framework,
                          version=spec.version, ep=topology.num_gpus, source=source)
    return model, {"backend": "measured",
                   "note": f"costs: measured tables {named} ({source}), the roofline "
                   "outside them (coverage in run.json)"}
