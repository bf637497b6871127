"""Torch hooks that record what every token's router chose, one trace step per forward call.

Hooks registered (and always removed, ``record_routing`` is a context manager):
    * a forward pre-hook on the model passed in: reads ``input_ids`` / ``inputs_embeds``,
      ``attention_mask``, ``mm_token_type_ids`` and the KV cache of the call (``cache``
      from transformers 5.24 on, ``past_key_values`` before; its length tells a decode
      call from a prefill when ``generate`` passes no attention mask);
    * a forward hook on every router (found by class, ``_sites.py``): keeps references to
      the router's own logits [T, E], weights [T, k] and ids [T, k] (no copy) and computes the
      feature entropy of its input hidden states [T, D] -> [T] on the input's device;
    * ERNIE only: a forward pre-hook on each split MoE block, reading
      ``moe_mm_token_type_ids`` [B, S], which decides which rows each of its two routers sees;
    * a forward hook on the model: assembles the step (padding and finished sequences
      removed, batch-major), moves it to the CPU once and hands it to ``on_step``.

Hooks read and never write: the model's outputs are unchanged (tested bit for bit).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from macssim._errors import CaptureError
from macssim.capture._assemble import assemble_step, past_length
from macssim.capture._families import Family, get_family, model_facts
from macssim.capture._sites import RouterSite, SplitSite, detect_family, find_sites
from macssim.trace import ModelFacts, Step

__all__ = ["RoutingRecorder", "feature_entropy", "record_routing"]

_VIDEO, _AUDIO = 2, 3


def feature_entropy(hidden: Any) -> Any:
    """Shannon entropy (nats) of softmax over the features of each row.

    Args:
        hidden: [T, D] hidden states, any float dtype, any device.
    Returns:
        [T] float32 on the same device: ``-sum_d p_d log p_d``, ``p = softmax(hidden)``.
    """
    import torch

    logp = torch.log_softmax(hidden, dim=-1, dtype=torch.float32)
    return -(logp.exp() * logp).sum(dim=-1)


class RoutingRecorder:
    """Records the routing of every forward call of ``model`` as format-v1 steps.

    Use through ``record_routing``. Between forward calls, ``begin_batch(request_ids)``
    says which request each batch row is; by default row ``b`` is request ``b``.
    """

    def __init__(self, model: Any, family: Family | str | None = None, *,
                 on_step: Callable[[Step], None] | None = None, name: str | None = None,
                 eos_token_ids: Sequence[int] | None = None, source: str = "") -> None:
        import torch

        self._torch = torch
        self.model = model
        self.family = (detect_family(model) if family is None else
                       get_family(family) if isinstance(family, str) else family)
        self._sites, self._splits, moe_layers = find_sites(model, self.family)
        dtype = str(next(model.parameters()).dtype).replace("torch.", "")
        config = model.config
        self.facts: ModelFacts = model_facts(
            config, self.family, moe_layers,
            name=name or getattr(config, "_name_or_path", "") or self.family.name,
            dtype=dtype, source=source or f"config of {type(model).__name__}")
        self.steps: list[Step] = []
        self.on_step: Callable[[Step], None] = on_step or self.steps.append
        """Where finished steps go (``steps.append`` unless given)."""
        self._signature = inspect.signature(model.forward)
        self._special = _special_token_ids(config)
        self._eos = _eos_ids(model, eos_token_ids)
        self._handles: list[Any] = []
        self._request_ids: Sequence[int] | None = None
        self._finished: Any = None
        self._ctx: dict[str, Any] | None = None
        self._calls: list[tuple[RouterSite, Any, Any, Any, Any]] = []
        self._split_masks: dict[int, Any] = {}
        self._next_index = 0

    # -- hooks ------------------------------------------------------------------------
    def attach(self) -> None:
        if self._handles:
            return
        reg = self._handles.append
        reg(self.model.register_forward_pre_hook(self._on_enter, with_kwargs=True))
        for module, site in self._sites.items():
            reg(module.register_forward_hook(self._router_hook(site)))
        for module, split in self._splits.items():
            reg(module.register_forward_pre_hook(self._split_hook(split), with_kwargs=True))
        reg(self.model.register_forward_hook(self._on_exit, with_kwargs=True))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._ctx = None
        self._calls.clear()

    def begin_batch(self, request_ids: Sequence[int] | None) -> None:
        """Name the requests of the next batch's rows (row b is ``request_ids[b]``)."""
        self._request_ids = None if request_ids is None else list(request_ids)

    def _on_enter(self, module: Any, args: tuple, kwargs: dict) -> None:
        bound = self._signature.bind_partial(*args, **kwargs).arguments
        extra = bound.pop("kwargs", None) or {}
        bound.update(extra)
        bound["_past_length"] = past_length(bound)  # the cache grows during the call
        self._ctx = bound
        self._calls = []
        self._split_masks = {}

    def _router_hook(self, site: RouterSite) -> Callable:
        torch = self._torch
        llama4 = self.family.kind == "llama4"

        def hook(module: Any, args: tuple, output: Any) -> None:
            if self._ctx is None:
                return
            with torch.no_grad():
                hidden = args[0]
                entropy = feature_entropy(hidden.reshape(-1, hidden.shape[-1]))
                if not isinstance(output, tuple) or len(output) != (2 if llama4 else 3):
                    raise CaptureError(
                        f"router {site.name} ({type(module).__name__}) returned "
                        f"{type(output).__name__}, expected the transformers 5 tuple "
                        f"{'(scores, logits)' if llama4 else '(logits, weights, ids)'}")
                if llama4:
                    scores, logits = output
                    ids = torch.topk(logits, site.top_k, dim=1).indices
                    weights = scores.gather(1, ids)
                else:
                    logits, weights, ids = output
                self._calls.append((site, logits.detach(), weights.detach(), ids.detach(),
                                    entropy))
        return hook

    def _split_hook(self, split: SplitSite) -> Callable:
        def hook(module: Any, args: tuple, kwargs: dict) -> None:
            mask = args[1] if len(args) > 1 else kwargs.get("moe_mm_token_type_ids")
            self._split_masks[split.layer] = mask
        return hook

    def _on_exit(self, module: Any, args: tuple, kwargs: dict, output: Any) -> None:
        ctx, calls = self._ctx, self._calls
        self._ctx, self._calls = None, []
        if ctx is None:
            return
        torch = self._torch
        with torch.no_grad():
            step, self._finished = assemble_step(
                self, ctx, calls, self._split_masks, index=self._next_index,
                finished=self._finished)
        if step is not None:  # None: every sequence of the call had finished
            self._next_index += 1
            self.on_step(step)

    # -- what assemble_step reads -----------------------------------------------------
    @property
    def special_token_ids(self) -> dict[int, int]:
        """token id -> modality code, for inputs without ``mm_token_type_ids``."""
        return self._special

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        return self._eos

    def request_ids_for(self, batch: int) -> np.ndarray:
        if self._request_ids is None:
            return np.arange(batch, dtype=np.int64)
        if len(self._request_ids) != batch:
            raise CaptureError(f"begin_batch named {len(self._request_ids)} requests but the "
                               f"forward call has {batch} rows")
        return np.asarray(self._request_ids, dtype=np.int64)


def _special_token_ids(config: Any) -> dict[int, int]:
    """Image/video/audio placeholder ids from the model's config -> modality code."""
    out: dict[int, int] = {}
    for attrs, code in ((("image_token_id", "image_token_index"), 1),
                        (("video_token_id", "video_token_index"), _VIDEO),
                        (("audio_token_id", "audio_token_index"), _AUDIO)):
        for attr in attrs:
            value = getattr(config, attr, None)
            if isinstance(value, int) and value >= 0:
                out[value] = code
                break
    return out


def _eos_ids(model: Any, given: Sequence[int] | None) -> tuple[int, ...]:
    if given is not None:
        return tuple(int(i) for i in given)
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is None:
        return ()
    return (int(eos),) if isinstance(eos, int) else tuple(int(i) for i in eos)


@contextmanager
def record_routing(model: Any, family: Family | str | None = None, *,
                   on_step: Callable[[Step], None] | None = None, name: str | None = None,
                   eos_token_ids: Sequence[int] | None = None,
                   source: str = "") -> Iterator[RoutingRecorder]:
    """Record routing while the block runs; hooks are removed on exit, error or not.

    Every forward call of ``model`` inside the block (including each call ``generate``
    makes) becomes one ``Step``: appended to ``recorder.steps``, or passed to ``on_step``.
    ``scores`` arrive as float16 when the model runs on a GPU (what the trace stores),
    float32 on CPU.

    Example::

        with record_routing(model) as rec:
            model(**inputs)
        step = rec.steps[0]            # step.topk_ids: [L, T, k]
    """
    recorder = RoutingRecorder(model, family, on_step=on_step, name=name,
                               eos_token_ids=eos_token_ids, source=source)
    recorder.attach()
    try:
        yield recorder
    finally:
        recorder.detach()
