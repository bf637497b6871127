"""Which all-to-all a cluster runs: the engine named by a topology (YAML field
``alltoall``) or a run, with any parameters it overrides.

This is a description only; what each engine costs (its calibrated defaults, the bytes it
moves and over which links) is ``macssim.cost``'s.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from macssim._errors import TopologyError
from macssim._validate import brief

__all__ = ["ENGINES", "AllToAllSpec", "parse_alltoall"]

ENGINES = ("nccl", "deepep-normal", "deepep-ll", "ideal")


@dataclass(frozen=True)
class AllToAllSpec:
    """Which all-to-all an engine runs and its parameters.

    Attributes:
        engine: one of ``ENGINES``. What a token copy weighs (BF16 or FP8 dispatch) is not
            the engine's: it is the run's ``Precision`` (``SimOptions.precision``), the one
            source of truth; the YAML key ``alltoall.fp8_dispatch`` is refused.
        nvlink_efficiency: DeepEP engines: the SM budget, the fraction of the calibrated
            NVLink capacity the kernels' few SMs reach. None: the engine's default.
        rdma_efficiency: DeepEP engines: the same for RDMA, of the calibrated NIC capacity.
        fixed_s: fixed cost of one collective on each GPU, before its data moves (notify and
            layout kernels); None: the engine's default.
    """

    engine: str = "nccl"
    nvlink_efficiency: float | None = None
    rdma_efficiency: float | None = None
    fixed_s: float | None = None

    def __post_init__(self) -> None:
        if self.engine not in ENGINES:
            raise TopologyError(f'"alltoall" is {brief(self.engine)}; known engines: '
                                f"{', '.join(ENGINES)}")
        for name in ("nvlink_efficiency", "rdma_efficiency"):
            v = getattr(self, name)
            if v is not None and not (isinstance(v, int | float) and 1e-3 <= v <= 1.0):
                raise TopologyError(f'"alltoall.{name}" must be a number in [0.001, 1], got '
                                    f"{brief(v)}")
        if self.fixed_s is not None and not (isinstance(self.fixed_s, int | float)
                                             and 0.0 <= self.fixed_s <= 1.0):
            raise TopologyError(f'"alltoall.fixed_s" must be a number in [0, 1] s, got '
                                f"{brief(self.fixed_s)}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SPEC_KEYS = ("engine", "nvlink_efficiency", "rdma_efficiency", "fixed_s")


def parse_alltoall(value: Any, where: str) -> AllToAllSpec:
    """The topology field ``alltoall``: an engine name, or a mapping with ``engine`` and
    optional parameters; None -> ``nccl``."""
    if value is None:
        return AllToAllSpec()
    if isinstance(value, AllToAllSpec):
        return value
    try:
        if isinstance(value, str):
            return AllToAllSpec(engine=value)
        if isinstance(value, dict):
            if "fp8_dispatch" in value:
                raise TopologyError(
                    '"alltoall.fp8_dispatch" is no longer read: the dispatch precision is '
                    "chosen per run, for every engine (SimOptions(precision=...), macssim "
                    "replay --precision fp8-experts); remove the key (docs/cluster.md)")
            unknown = sorted(set(map(str, value)) - set(_SPEC_KEYS))
            if unknown:
                raise TopologyError(f'unknown key(s) {brief(unknown)} in "alltoall"; known: '
                                    f"{list(_SPEC_KEYS)}")
            return AllToAllSpec(**value)
    except TopologyError as e:
        raise TopologyError(f"{where}: {e}") from None
    raise TopologyError(f'{where}: "alltoall" must be an engine name ({", ".join(ENGINES)}) or '
                        f"a mapping with \"engine\", got {brief(value)}")
