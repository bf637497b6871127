"""Read NVIDIA aiconfigurator-core's measured per-operation tables into macssim's format.

Why read its files rather than call its Python API: aiconfigurator-core's documented
entry point (``aiconfigurator_core.sdk.perf_database.get_database``) returns a
``PerfDatabase`` whose tables have been reshaped, and partly filled in, for its own
estimator (Rust "table views", cross-version back-fill, shared-layer reuse). macssim
wants the raw measurements: only those make a leave-one-out check of an interpolator
meaningful. The files are plain Parquet under ``aiconfigurator_core/systems/data/``;
this module is the one place that knows their layout and units (tested against 0.12.0;
see docs/cost-tables.md):

* GEMM and fused MoE ``latency``: milliseconds;
* NCCL ``message_size``: elements of ``nccl_dtype`` in the per-rank buffer (nccl-tests'
  "size"), ``latency``: milliseconds;
* DeepEP ``*_us`` columns and ``moe_a2a`` ``latency``: microseconds.

The package (and pyarrow, which its wheel requires, to read Parquet) is imported only
when a converter is called; ``data_root`` may point at an unpacked wheel's
``aiconfigurator_core/systems`` instead, with no install at all.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from macssim._errors import CostError
from macssim.cost._table import OPS, CostTable, table_from_frame

__all__ = ["aiconfigurator_sources", "from_aiconfigurator", "tables_from_aiconfigurator"]

INSTALL_HINT = ("aiconfigurator-core is not installed: pip install aiconfigurator-core "
                "(or pass data_root= pointing at an unpacked wheel's "
                "aiconfigurator_core/systems directory)")

# op -> (family directory, file names)
_FILES = {
    "gemm": ("gemm", ("gemm_perf.parquet",)),
    "moe": ("moe", ("moe_perf.parquet",)),
    "nccl": ("comm", ("nccl_perf.parquet",)),
    "deepep": ("comm", ("wideep_deepep_normal_perf.parquet", "wideep_deepep_ll_perf.parquet",
                        "moe_a2a_perf.parquet")),
}

_ELEMENT_BYTES = {"half": 2, "float16": 2, "bfloat16": 2, "bf16": 2, "fp16": 2,
                  "int8": 1, "uint8": 1, "fp8": 1, "float": 4, "float32": 4, "fp32": 4}


def _systems_root(data_root: str | os.PathLike | None) -> Path:
    if data_root is not None:
        root = Path(data_root)
        if not root.is_dir():
            raise CostError(f"{root}: not a directory (data_root should be "
                            "aiconfigurator_core/systems)")
        return root
    try:
        spec = importlib.util.find_spec("aiconfigurator_core")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise CostError(INSTALL_HINT)
    root = Path(next(iter(spec.submodule_search_locations))) / "systems"
    if not root.is_dir():
        raise CostError(f"{root}: aiconfigurator-core is installed but has no systems/ "
                        "data directory (a release this converter does not know)")
    return root


def _system_dir(root: Path, system: str) -> tuple[Path, int]:
    """The system's data directory and its GPUs per node (from ``<system>.yaml``)."""
    spec_file = root / f"{system}.yaml"
    data_dir, per_node = root / "data" / system, 8
    if spec_file.is_file():
        try:
            spec = yaml.safe_load(spec_file.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise CostError(f"{spec_file}: cannot read system spec ({e})") from e
        if isinstance(spec, dict):
            if isinstance(spec.get("data_dir"), str):
                data_dir = root / spec["data_dir"]
            node = spec.get("node") or {}
            if isinstance(node, dict) and isinstance(node.get("num_gpus_per_node"), int):
                per_node = node["num_gpus_per_node"]
    if not data_dir.is_dir():
        known = sorted(p.name for p in (root / "data").iterdir() if p.is_dir()) \
            if (root / "data").is_dir() else []
        raise CostError(f"{data_dir}: no data for system {system!r} (systems: "
                        f"{', '.join(known)})")
    return data_dir, per_node


def aiconfigurator_sources(system: str = "h100_sxm", *,
                           data_root: str | os.PathLike | None = None) -> pd.DataFrame:
    """What the installed aiconfigurator-core holds for ``system``: one row per (op,
    framework, version) that :func:`from_aiconfigurator` can read, with its files."""
    data_dir, _ = _system_dir(_systems_root(data_root), system)
    rows = []
    for op, (family, names) in _FILES.items():
        for name in names:
            for path in sorted(data_dir.glob(f"{family}/*/*/{name}")) + \
                    sorted(data_dir.glob(f"*/*/{name}")):
                if op == "nccl" and path.parent.parent.name != "nccl":
                    continue
                if op != "nccl" and path.parent.parent.name == "nccl":
                    continue
                rows.append({"op": op, "framework": path.parent.parent.name,
                             "version": path.parent.name,
                             "file": str(path.relative_to(data_dir))})
    frame = pd.DataFrame(rows, columns=["op", "framework", "version", "file"])
    return frame.drop_duplicates().reset_index(drop=True)


def from_aiconfigurator(op: str, system: str = "h100_sxm", framework: str = "trtllm",
                        version: str | None = None, *,
                        data_root: str | os.PathLike | None = None) -> CostTable:
    """One op's measurements for one system and framework version, in macssim's format.

    ``op``: gemm | moe | nccl (framework "nccl", version = NCCL's) | deepep (SGLang's
    ``wideep_deepep_*`` tables and vLLM / TensorRT-LLM ``moe_a2a`` DeepEP rows).
    ``version=None`` takes the version aiconfigurator-core serves by default (its
    ``current`` slot in ``query_versions.yaml``; for NCCL the system spec's
    ``nccl_version``) when that holds the op's files, else the newest that does. Rows
    whose latency is missing, non-finite or not positive are dropped with a warning."""
    if op not in OPS:
        raise CostError(f"unknown op {op!r} (one of {', '.join(OPS)})")
    if op == "nccl":
        framework = "nccl"
    root = _systems_root(data_root)
    data_dir, per_node = _system_dir(root, system)
    family, names = _FILES[op]
    base = None
    for candidate in (data_dir / family / framework, data_dir / framework):
        if candidate.is_dir():
            base = candidate
            break
    if base is None:
        raise CostError(f"{data_dir}: no {op} data for framework {framework!r} "
                        f"(have: {_offered(root, system, op, data_root)})")
    versions = [p for p in base.iterdir() if p.is_dir() and any((p / n).is_file()
                                                                 for n in names)]
    if version is None:
        if not versions:
            raise CostError(f"{base}: no {op} tables in any version directory")
        preferred = _preferred_version(root, system, framework)
        have = {p.name for p in versions}
        version = preferred if preferred in have else max(have, key=_version_key)
    vdir = base / version
    files = [vdir / n for n in names if (vdir / n).is_file()]
    if not files:
        raise CostError(f"{vdir}: no {op} table ({' or '.join(names)}); versions with one: "
                        f"{', '.join(sorted((p.name for p in versions), key=_version_key))}")
    parts = []
    for path in files:
        raw = _read_parquet(path)
        parts.append(_CONVERT[path.name](raw, path, per_node))
    frame = pd.concat(parts, ignore_index=True)
    frame.insert(1, "system", system)
    frame.insert(2, "framework", framework)
    frame.insert(3, "version", version)
    lat = pd.to_numeric(frame["latency_s"], errors="coerce").to_numpy(dtype=float)
    keep = np.isfinite(lat) & (lat > 0)
    if not keep.all():
        warnings.warn(f"{vdir}: dropped {int((~keep).sum())} of {len(keep)} {op} rows "
                      "with a missing, non-finite or non-positive latency", stacklevel=2)
        frame = frame[keep]
    if frame.empty:
        raise CostError(f"{vdir}: no usable {op} rows")
    columns = list(OPS[op].columns) + ["source"]
    return table_from_frame(frame[columns], where=f"aiconfigurator:{system}/{framework}/"
                            f"{version}/{op}")


def tables_from_aiconfigurator(system: str = "h100_sxm", *,
                               sources: dict[str, tuple[str, str | None]] | None = None,
                               data_root: str | os.PathLike | None = None
                               ) -> dict[str, CostTable]:
    """Several ops at once: ``sources`` maps op -> (framework, version or None); by
    default TensorRT-LLM's newest GEMM and MoE, NCCL's newest, SGLang's newest DeepEP."""
    sources = sources or {"gemm": ("trtllm", None), "moe": ("trtllm", None),
                          "nccl": ("nccl", None), "deepep": ("sglang", None)}
    return {op: from_aiconfigurator(op, system, fw, ver, data_root=data_root)
            for op, (fw, ver) in sources.items()}


# ------------------------------------------------------------------------------------


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except ImportError as e:
        raise CostError(f"{path}: reading aiconfigurator-core's Parquet tables needs "
                        "pyarrow (installed with aiconfigurator-core: pip install "
                        "aiconfigurator-core)") from e
    except Exception as e:  # noqa: BLE001 - pyarrow raises many kinds
        raise CostError(f"{path}: not a readable Parquet file ({e})") from e


def _need(raw: pd.DataFrame, path: Path, columns: list[str]) -> None:
    missing = [c for c in columns if c not in raw.columns]
    if missing:
        raise CostError(f"{path}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(missing)} (a layout this converter does not know; "
                        "tested with aiconfigurator-core 0.12.0)")


def _source(path: Path) -> str:
    parts = path.parts
    return "/".join(parts[parts.index("data") + 1:]) if "data" in parts else path.name


def _kernel(raw: pd.DataFrame, default: str) -> pd.Series:
    if "kernel_source" in raw.columns:
        return raw["kernel_source"].astype(str)
    return pd.Series(default, index=raw.index)


def _gemm(raw: pd.DataFrame, path: Path, per_node: int) -> pd.DataFrame:
    _need(raw, path, ["gemm_dtype", "m", "n", "k", "latency"])
    return pd.DataFrame({"op": "gemm", "kernel": _kernel(raw, "default"),
                         "dtype": raw["gemm_dtype"].astype(str), "m": raw["m"],
                         "n": raw["n"], "k": raw["k"],
                         "latency_s": raw["latency"].astype(float) * 1e-3,
                         "source": _source(path)})


def _moe(raw: pd.DataFrame, path: Path, per_node: int) -> pd.DataFrame:
    _need(raw, path, ["moe_dtype", "num_tokens", "hidden_size", "inter_size", "topk",
                      "num_experts", "moe_tp_size", "moe_ep_size", "distribution", "latency"])
    return pd.DataFrame({"op": "moe", "kernel": _kernel(raw, "default"),
                         "dtype": raw["moe_dtype"].astype(str),
                         "distribution": raw["distribution"].astype(str),
                         "hidden": raw["hidden_size"], "inter": raw["inter_size"],
                         "experts": raw["num_experts"], "topk": raw["topk"],
                         "tp": raw["moe_tp_size"], "ep": raw["moe_ep_size"],
                         "tokens": raw["num_tokens"],
                         "latency_s": raw["latency"].astype(float) * 1e-3,
                         "source": _source(path)})


def _nccl(raw: pd.DataFrame, path: Path, per_node: int) -> pd.DataFrame:
    _need(raw, path, ["nccl_dtype", "num_gpus", "message_size", "op_name", "latency"])
    dtype = raw["nccl_dtype"].astype(str)
    unknown = sorted(set(dtype) - set(_ELEMENT_BYTES))
    if unknown:
        raise CostError(f"{path}: nccl_dtype {unknown[0]!r} has no known element size")
    return pd.DataFrame({"op": "nccl", "kernel": _kernel(raw, "NCCL"), "dtype": dtype,
                         "collective": raw["op_name"].astype(str),
                         "ranks": raw["num_gpus"],
                         "bytes_per_rank": raw["message_size"].astype(float) *
                         dtype.map(_ELEMENT_BYTES).astype(float),
                         "latency_s": raw["latency"].astype(float) * 1e-3,
                         "source": _source(path)})


def _deepep_common(raw: pd.DataFrame, per_node: int, path: Path) -> dict:
    return {"op": "deepep", "kernel": _kernel(raw, "deepep"), "dtype": "default",
            "hidden": raw["hidden_size"], "topk": raw["num_topk"],
            "experts": raw["num_experts"], "ep": raw["node_num"] * per_node,
            "tokens": raw["num_token"], "source": _source(path)}


def _deepep_normal(raw: pd.DataFrame, path: Path, per_node: int) -> pd.DataFrame:
    _need(raw, path, ["node_num", "hidden_size", "num_token", "num_topk", "num_experts",
                      "dispatch_sms", "dispatch_transmit_us", "dispatch_notify_us",
                      "combine_sms", "combine_transmit_us", "combine_notify_us"])
    parts = []
    for phase in ("dispatch", "combine"):
        part = _deepep_common(raw, per_node, path)
        part.update(mode="normal", phase=phase, sms=raw[f"{phase}_sms"],
                    latency_s=(raw[f"{phase}_transmit_us"].astype(float) +
                               raw[f"{phase}_notify_us"].astype(float)) * 1e-6)
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def _deepep_ll(raw: pd.DataFrame, path: Path, per_node: int) -> pd.DataFrame:
    _need(raw, path, ["node_num", "hidden_size", "num_token", "num_topk", "num_experts",
                      "dispatch_avg_t_us", "combine_avg_t_us"])
    parts = []
    for phase in ("dispatch", "combine"):
        part = _deepep_common(raw, per_node, path)
        part.update(mode="low_latency", phase=phase, sms=0,
                    latency_s=raw[f"{phase}_avg_t_us"].astype(float) * 1e-6)
        parts.append(pd.DataFrame(part))
    return pd.concat(parts, ignore_index=True)


def _moe_a2a(raw: pd.DataFrame, path: Path, per_node: int) -> pd.DataFrame:
    _need(raw, path, ["kernel_source", "comm_backend", "phase", "comm_dtype", "ep_size",
                      "hidden_size", "topk", "num_experts", "num_tokens", "sms", "latency"])
    raw = raw[raw["kernel_source"].astype(str).str.lower() == "deepep"]
    backend = raw["comm_backend"].astype(str)
    low = backend.str.contains("_ll") | backend.str.contains("generation")
    return pd.DataFrame({"op": "deepep", "kernel": backend, "dtype":
                         raw["comm_dtype"].astype(str),
                         "mode": np.where(low, "low_latency", "normal"),
                         "phase": raw["phase"].astype(str), "hidden": raw["hidden_size"],
                         "topk": raw["topk"], "experts": raw["num_experts"],
                         "ep": raw["ep_size"], "sms": raw["sms"],
                         "tokens": raw["num_tokens"],
                         "latency_s": raw["latency"].astype(float) * 1e-6,
                         "source": _source(path)})


_CONVERT = {"gemm_perf.parquet": _gemm, "moe_perf.parquet": _moe,
            "nccl_perf.parquet": _nccl, "wideep_deepep_normal_perf.parquet": _deepep_normal,
            "wideep_deepep_ll_perf.parquet": _deepep_ll, "moe_a2a_perf.parquet": _moe_a2a}


def _preferred_version(root: Path, system: str, framework: str) -> str | None:
    """The version aiconfigurator-core itself serves by default: for NCCL the system
    spec's ``misc.nccl_version``; for a framework the ``current`` slot of
    ``query_versions.yaml`` (per-system overrides first)."""
    try:
        if framework == "nccl":
            spec = yaml.safe_load((root / f"{system}.yaml").read_text(encoding="utf-8"))
            value = ((spec or {}).get("misc") or {}).get("nccl_version")
            return str(value) if value is not None else None
        doc = yaml.safe_load((root / "query_versions.yaml").read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError, AttributeError):
        return None
    if not isinstance(doc, dict):
        return None
    for section in ((doc.get("overrides") or {}).get(system) or {}, doc.get("defaults") or {}):
        slot = section.get(framework) if isinstance(section, dict) else None
        if isinstance(slot, dict) and slot.get("current"):
            return str(slot["current"])
    return None


def _version_key(text: str) -> tuple:
    """Sort "0.5.6.post2" < "0.5.10" < "1.3.0rc10" < "1.3.0rc20" < "1.3.0"."""
    import re

    parts = []
    for token in re.findall(r"\d+|[a-z]+", text.lower()):
        if token.isdigit():
            parts.append((2, int(token), ""))
        elif token in ("rc", "dev", "a", "b", "alpha", "beta"):
            parts.append((0, 0, token))  # a pre-release sorts before its release
        else:
            parts.append((1, 0, token))
    return tuple(parts) + ((1, 0, ""),)


def _offered(root: Path, system: str, op: str, data_root) -> str:
    try:
        frame = aiconfigurator_sources(system, data_root=root)
    except CostError:
        return "nothing"
    pairs = sorted({f"{f}/{v}" for f, v in frame.loc[frame.op == op,
                                                     ["framework", "version"]].values})
    return ", ".join(pairs) or "nothing"
