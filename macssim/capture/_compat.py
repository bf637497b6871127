"""Repairs for transformers bugs that break a supported family outright, with or without
our hooks.

Each repair is installed by feature detection, not by version number: it looks for the
broken construct itself, is a no-op where it is absent, and changes no value the model
computes (the logits are bit for bit those of the unrepaired model where it works).
``build_tiny_model`` and ``load_model`` apply them; a model loaded by other means can be
passed to ``repair_model`` before use.

Llama 4 on transformers 5.24 (``image_outputs``)
    5.24 replaced ``Llama4CausalLMOutputWithPast.image_hidden_states`` with an
    ``image_outputs`` field (now a ``MultimodalCausalLMOutputWithPast``), and
    ``Llama4ForConditionalGeneration.forward`` ends with
    ``image_outputs=outputs.image_outputs``, where ``outputs`` is what its
    ``language_model`` returned. The other 5.24 vision-language models read that field
    from their base model's output, which sets ``image_outputs=mm_encoder_outputs.get(
    "image")``; Llama 4 has no base model, its ``language_model`` is a
    ``Llama4ForCausalLM`` whose ``MoeCausalLMOutputWithPast`` has no such field, so every
    call with ``return_dict=True`` (every call ``generate`` makes) raises ``AttributeError:
    'MoeCausalLMOutputWithPast' object has no attribute 'image_outputs'``. 5.23 filled
    ``image_hidden_states`` from a local and worked. The repair gives the language
    model's output that attribute: what upstream evidently meant, the image encoder
    output of the same call (``mm_encoder_outputs["image"]`` when ``generate`` pre-encoded
    the images, else the vision model's output), or None for a text-only call.
"""

from __future__ import annotations

from typing import Any

__all__ = ["repair_model"]

_MARK = "_macssim_repairs"


def repair_model(model: Any) -> Any:
    """Install every repair ``model`` needs (idempotent); returns ``model``."""
    done: set[str] = getattr(model, _MARK, None) or set()
    if "llama4-image-outputs" not in done and _llama4_lacks_image_outputs(model):
        _repair_llama4_image_outputs(model)
        done.add("llama4-image-outputs")
    if done:
        object.__setattr__(model, _MARK, done)  # a plain attribute, not a submodule
    return model


def _class_names(obj: Any) -> set[str]:
    return {cls.__name__ for cls in type(obj).__mro__}


def _llama4_lacks_image_outputs(model: Any) -> bool:
    """True when ``model`` is a Llama 4 whose top-level output declares ``image_outputs``
    (so ``forward`` copies it from the language model's output) while the language
    model's output class has no such field."""
    if "Llama4ForConditionalGeneration" not in _class_names(model):
        return False
    language = getattr(model, "language_model", None)
    if language is None or "Llama4ForCausalLM" not in _class_names(language):
        return False
    import importlib
    from dataclasses import fields, is_dataclass

    try:
        module = importlib.import_module(type(model).__module__)
        from transformers.modeling_outputs import MoeCausalLMOutputWithPast
    except ImportError:
        return False
    top = getattr(module, "Llama4CausalLMOutputWithPast", None)

    def declares(cls: Any) -> bool:
        return is_dataclass(cls) and "image_outputs" in {f.name for f in fields(cls)}

    return declares(top) and not declares(MoeCausalLMOutputWithPast)


def _repair_llama4_image_outputs(model: Any) -> None:
    """Persistent hooks: the model's pre-hook notes the call's pre-encoded image outputs,
    a hook on the vision model notes an encoding made inside the call, and a hook on the
    language model sets ``image_outputs`` on its output (a plain attribute, not a
    field: ``keys()``, ``to_tuple()`` and the logits are untouched)."""
    call: dict[str, Any] = {}

    def on_enter(module: Any, args: tuple, kwargs: dict) -> None:
        call.clear()
        given = kwargs.get("mm_encoder_outputs")
        call["given"] = given if isinstance(given, dict) else None

    def on_vision(module: Any, args: tuple, output: Any) -> None:
        call["encoded"] = output

    def on_language(module: Any, args: tuple, output: Any) -> None:
        if output is None or isinstance(output, tuple) or hasattr(output, "image_outputs"):
            return
        given = call.get("given")
        image = given.get("image") if given else None
        output.image_outputs = image if image is not None else call.get("encoded")
        call.clear()  # a later direct call of the language model gets None

    model.register_forward_pre_hook(on_enter, with_kwargs=True)
    vision = getattr(model, "vision_model", None)
    if vision is not None:
        vision.register_forward_hook(on_vision)
    model.language_model.register_forward_hook(on_language)
