"""Finding a model's routers by class and mapping each to its decoder layer and expert set.

A router's layer is its position in the nearest enclosing ``nn.ModuleList`` (the decoder
layers), read from the module tree, not from a family-specific attribute path; every
router must sit in the same list. ERNIE-4.5-VL's two routers per layer are told apart by
which sub-block (``text_moe`` / ``vision_moe``) holds them, and get global expert ids
offset by the set's first id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from macssim._errors import CaptureError
from macssim.capture._families import Family, get_family, list_families

__all__ = ["RouterSite", "SplitSite", "detect_family", "find_sites"]


@dataclass(frozen=True)
class RouterSite:
    """Where one hooked router sits."""

    name: str
    """Qualified module name, for messages."""
    layer: int
    """Trace layer: index into ``moe_layers``."""
    decoder_layer: int
    """Decoder-layer index of the router."""
    set_index: int
    """Expert set (0 unless the family splits experts by modality)."""
    offset: int
    """Global id of the set's first expert."""
    num_experts: int
    """Experts this router scores."""
    top_k: int


@dataclass(frozen=True)
class SplitSite:
    """ERNIE: the block that hands each of its routers one modality's rows."""

    name: str
    layer: int


def _class_names(module: Any) -> set[str]:
    return {cls.__name__ for cls in type(module).__mro__}


def detect_family(model: Any) -> Family:
    """The family of a loaded model: by ``config.model_type``, else by router classes."""
    from macssim.capture._families import family_for_config

    config = getattr(model, "config", None)
    try:
        if config is not None:
            return family_for_config(config, where=type(model).__name__)
    except CaptureError:
        pass
    found = {type(m).__name__ for m in model.modules()}
    for fam in list_families():
        if found & set(fam.router_classes):
            return fam
    if config is not None:
        family_for_config(config, where=type(model).__name__)  # raises with the family list
    raise CaptureError(f"{type(model).__name__}: no known MoE router classes; supported "
                       f"families: {', '.join(f.name for f in list_families())}")


def _decoder_index(name: str, modules: dict[str, Any]) -> tuple[str, int]:
    """(name of the enclosing ModuleList, index in it) for a module name."""
    import torch.nn as nn

    parts = name.split(".")
    for i in range(len(parts) - 1, -1, -1):
        parent = ".".join(parts[:i])
        if parts[i].isdigit() and isinstance(modules.get(parent), nn.ModuleList):
            return parent, int(parts[i])
    raise CaptureError(f"router {name!r} is not inside an nn.ModuleList of decoder layers")


def find_sites(model: Any, family: Family | str) -> tuple[dict[Any, RouterSite],
                                                          dict[Any, SplitSite],
                                                          tuple[int, ...]]:
    """Every router of ``family`` in ``model`` (module -> site), the split blocks
    (ERNIE), and the decoder-layer index of each MoE layer in order."""
    fam = get_family(family) if isinstance(family, str) else family
    modules = dict(model.named_modules())
    wanted = set(fam.router_classes)
    routers = {n: m for n, m in modules.items() if _class_names(m) & wanted}
    if not routers:
        raise CaptureError(f"{type(model).__name__}: no MoE routers found (looked for "
                           f"{', '.join(fam.router_classes)}); is this a dense model?")
    placed: dict[str, tuple[str, int]] = {n: _decoder_index(n, modules) for n in routers}
    lists = {holder for holder, _ in placed.values()}
    if len(lists) > 1:
        raise CaptureError(f"{type(model).__name__}: routers sit in several layer lists "
                           f"{sorted(lists)}; capture supports one decoder stack")
    moe_layers = tuple(sorted({idx for _, idx in placed.values()}))
    set_of = _split_membership(modules, fam)
    splits = {m: SplitSite(n, moe_layers.index(_decoder_index(n, modules)[1]))
              for n, m in modules.items() if fam.split_block and
              fam.split_block in _class_names(m)}
    sites: dict[Any, RouterSite] = {}
    seen: dict[tuple[int, int], str] = {}
    for name, module in routers.items():
        decoder_layer = placed[name][1]
        set_index = set_of.get(name, 0)
        num_experts, top_k = _router_shape(module, name)
        key = (decoder_layer, set_index)
        if key in seen:
            raise CaptureError(f"two routers for decoder layer {decoder_layer}, expert set "
                               f"{set_index}: {seen[key]!r} and {name!r}")
        seen[key] = name
        sites[module] = RouterSite(name, moe_layers.index(decoder_layer), decoder_layer,
                                   set_index, set_index * num_experts, num_experts, top_k)
    return sites, splits, moe_layers


def _split_membership(modules: dict[str, Any], fam: Family) -> dict[str, int]:
    """ERNIE: router name -> expert-set index, from the sub-block holding it."""
    if not fam.split_block:
        return {}
    out: dict[str, int] = {}
    for name, module in modules.items():
        if fam.split_block not in _class_names(module):
            continue
        for set_index, (_, attr) in enumerate(fam.split_sets):
            sub = getattr(module, attr, None)
            if sub is None:
                raise CaptureError(f"{name}: {fam.split_block} has no {attr!r} sub-block")
            prefix = f"{name}.{attr}."
            for inner in modules:
                if inner.startswith(prefix):
                    out[inner] = set_index
    return out


def _router_shape(module: Any, name: str) -> tuple[int, int]:
    num_experts = getattr(module, "num_experts", None)
    top_k = getattr(module, "top_k", None)
    if num_experts is None:
        weight = getattr(module, "weight", None)
        num_experts = None if weight is None else int(weight.shape[0])
    if num_experts is None or top_k is None:
        raise CaptureError(f"router {name!r} ({type(module).__name__}) has no num_experts/"
                           "top_k attributes; is this transformers >= 5?")
    return int(num_experts), int(top_k)
