"""Precision as deployed: which phases compute in FP8, and what each moves in bytes.

Serving engines on Hopper/Blackwell run the MoE experts (and often every linear layer) in
FP8: twice the dense tensor-core peak of BF16, one byte per weight, activations quantised
per token in groups of 128 elements with one fp32 scale each (DeepSeek-V3's block-wise FP8
recipe, as vLLM/SGLang/DeepGEMM run it). DeepEP dispatches in that FP8 format and combines
in BF16. ``Precision`` says, per run, which phases do what (``SimOptions.precision``,
``macssim replay --precision``); it is the one source of truth for the dispatch's bytes,
whatever the all-to-all engine.

``bf16`` means the model as it is today: the BF16 tensor-core peak
(``GpuSpec.bf16_flops_per_s``) and the model's own dtype for bytes (2 for a BF16 model).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from macssim._errors import MacssimError, TopologyError
from macssim.hardware import GpuSpec, Topology
from macssim.trace import ModelFacts

__all__ = ["DTYPES", "PRECISION_PRESETS", "Precision", "check_precision", "fp8_row_bytes",
           "peak_flops_per_s", "row_bytes", "weight_bytes_per_element",
           "achievable_flops_per_s"]

DTYPES = ("bf16", "fp8")
FP8_GROUP = 128
"""Elements per FP8 scale: per-token groups of 128 (DeepSeek-V3's fine-grained
quantisation; DeepEP's FP8 dispatch and DeepGEMM/vLLM/SGLang block-FP8 kernels)."""
FP8_SCALE_BYTES = 4
"""One fp32 scale per group."""


def fp8_row_bytes(n: int) -> int:
    """Bytes of one row of ``n`` elements quantised to FP8: ``n + 4·⌈n/128⌉``."""
    return int(n) + FP8_SCALE_BYTES * -(-int(n) // FP8_GROUP)


@dataclass(frozen=True)
class Precision:
    """The precision of each phase of a step.

    Attributes:
        experts: routed and shared expert GEMMs: ``fp8`` runs them at the FP8 peak with
            1-byte weights, each row read quantised (``fp8_row_bytes``), each output row
            written in the model's dtype.
        linear: the other linear layers: attention projections (QKV, output), the dense
            MLP of dense layers, the LM head; ``fp8`` as for ``experts``. The attention core
            (QKᵀ, PV, KV cache) and the vision encoder stay in the model's dtype.
        dispatch: what the dispatch all-to-all carries per token copy: ``bf16`` h·b bytes
            (b the model's bytes per element), ``fp8`` h + 4·⌈h/128⌉ bytes; every engine.
        combine: ``bf16`` only (DeepEP and every engine we know of combine in BF16).
    """

    experts: str = "bf16"
    linear: str = "bf16"
    dispatch: str = "bf16"
    combine: str = "bf16"

    def __post_init__(self) -> None:
        for name in ("experts", "linear", "dispatch"):
            if getattr(self, name) not in DTYPES:
                raise MacssimError(f'Precision: "{name}" must be one of {", ".join(DTYPES)}, '
                                   f"got {getattr(self, name)!r}")
        if self.combine != "bf16":
            raise MacssimError(f'Precision: "combine" must be bf16 (combine runs in BF16), got '
                               f"{self.combine!r}")

    @property
    def fp8_compute(self) -> tuple[str, ...]:
        """The fields that compute in FP8 (they need ``gpu.fp8_flops_per_s``)."""
        return tuple(n for n in ("experts", "linear") if getattr(self, n) == "fp8")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


PRECISION_PRESETS: dict[str, Precision] = {
    "bf16": Precision(),
    "fp8-experts": Precision(experts="fp8", dispatch="fp8"),
    "fp8": Precision(experts="fp8", linear="fp8", dispatch="fp8"),
}
"""``macssim replay --precision``: ``bf16`` (the model as before), ``fp8-experts`` (routed
and shared experts in FP8, FP8 dispatch, BF16 combine), ``fp8`` (also attention
projections, dense MLP and LM head in FP8)."""


def as_precision(value: Any) -> Precision:
    """A ``Precision`` or a preset name."""
    if isinstance(value, Precision):
        return value
    if isinstance(value, str) and value in PRECISION_PRESETS:
        return PRECISION_PRESETS[value]
    raise MacssimError(f'"precision" must be a Precision or one of '
                       f"{', '.join(PRECISION_PRESETS)}, got {value!r}")


def _fp8_missing(where: str, gpu: GpuSpec, what: str) -> TopologyError:
    return TopologyError(
        f'{where}: {what} computes in FP8, but "gpu.fp8_flops_per_s" is not set for '
        f"{gpu.kind} (a GPU without FP8 tensor cores, or a topology file that does not say); "
        f"add the dense FP8 peak (no sparsity) to the topology, or use precision bf16")


def check_precision(topo: Topology, precision: Precision) -> None:
    """FP8 compute needs the GPU's FP8 peak: a TopologyError naming the topology's file and
    the field when it is absent."""
    needs = precision.fp8_compute
    if needs and topo.gpu.fp8_flops_per_s is None:
        where = topo.source or f"topology {topo.name!r}"
        raise _fp8_missing(where, topo.gpu, f"precision {'/'.join(needs)}")


def achievable_flops_per_s(gpu: GpuSpec, dtype: str) -> float:
    """What GEMM kernels reach in ``dtype``: the peak times the efficiency for that dtype
    (FP8: ``fp8_compute_efficiency`` when the GPU states one)."""
    efficiency = gpu.compute_efficiency
    if dtype == "fp8" and gpu.fp8_compute_efficiency is not None:
        efficiency = gpu.fp8_compute_efficiency
    return peak_flops_per_s(gpu, dtype) * efficiency


def peak_flops_per_s(gpu: GpuSpec, dtype: str) -> float:
    """The dense tensor-core peak for ``dtype``."""
    if dtype == "fp8":
        if gpu.fp8_flops_per_s is None:
            raise _fp8_missing(f"GPU {gpu.kind!r}", gpu, "a phase")
        return float(gpu.fp8_flops_per_s)
    return float(gpu.bf16_flops_per_s)


def weight_bytes_per_element(model: ModelFacts, dtype: str) -> float:
    """Bytes per weight: 1 in FP8 (block scales, 4 bytes per 128×128 block, ignored: 0.02 %),
    the model's otherwise."""
    return 1.0 if dtype == "fp8" else float(model.bytes_per_element)


def row_bytes(model: ModelFacts, dtype: str, n: int | None = None) -> float:
    """Bytes of one activation row of ``n`` elements (default: the hidden size) as a GEMM
    in ``dtype`` reads it (FP8: quantised with its scales) or a dispatch carries it."""
    n = model.hidden_size if n is None else n
    return float(fp8_row_bytes(n)) if dtype == "fp8" else float(n * model.bytes_per_element)
