"""Model inputs from prompts, with the model's own processor, and batches under a budget.

Batches are left-padded (the side ``generate`` needs); the capture removes the padding
again from the trace. A batch closes at ``batch_size`` requests or when its padded size,
rows x longest request, would pass ``max_tokens``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from macssim._errors import CaptureError
from macssim.capture._families import Family
from macssim.capture._prompts import Prompt

__all__ = ["encode", "plan_batches", "prompt_tokens", "tiny_requests", "video_mode"]


def video_mode(processor: Any, family: Family, prompts: Sequence[Prompt]) -> str:
    """How video prompts reach the model: ``video`` through the processor's video
    processor, or ``frames-as-images`` when it has none or it fails on the first video
    prompt (recorded in the provenance, since it changes the modality to image)."""
    if family.vision is None or getattr(processor, "video_processor", None) is None:
        return "frames-as-images"
    first = next((p for p in prompts if p.video), None)
    if first is None:
        return "video"
    try:
        encode(processor, family, [first], video=True)
    except CaptureError:
        return "frames-as-images"
    return "video"


def _content(prompt: Prompt, video_ok: bool) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = [{"type": "image"} for _ in prompt.images]
    if prompt.video:
        items += [{"type": "video"}] if video_ok else [{"type": "image"} for _ in prompt.video]
    return items + [{"type": "text", "text": prompt.text}]


def _render(processor: Any, prompt: Prompt, video_ok: bool) -> str:
    """The prompt as the model expects it: the processor's chat template when it has one,
    else one image placeholder per image followed by the text."""
    if getattr(processor, "chat_template", None):
        text_only = not hasattr(processor, "image_processor")  # a tokenizer: plain string
        content = prompt.text if text_only else _content(prompt, video_ok)
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, tokenize=False,
                                             add_generation_prompt=True)
    token = getattr(processor, "image_token", None) or "<image>"
    images = len(prompt.images) + (0 if video_ok else len(prompt.video))
    video = (getattr(processor, "video_token", "") if video_ok and prompt.video else "")
    return token * images + video + prompt.text


def encode(processor: Any, family: Family, prompts: Sequence[Prompt], *,
           device: str | None = None, dtype: Any = None, video: bool = False) -> dict[str, Any]:
    """Tokenise a batch of prompts with ``processor`` (a processor for vision families, a
    tokenizer for text-only ones), left-padded, on ``device``; floating inputs (pixels)
    are cast to the model's ``dtype``. ``video``: pass video frames as a video (else as
    images, see ``video_mode``)."""
    import torch

    names = ", ".join(p.name for p in prompts)
    tokenizer = getattr(processor, "tokenizer", processor)
    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    try:
        if family.vision is None:
            for p in prompts:
                if p.images or p.video:
                    raise CaptureError(f"request {p.name!r} has images, but {family.name} is "
                                       "a text-only model")
            texts = [_render(tokenizer, p, False) for p in prompts]
            batch = tokenizer(texts, padding=True, return_tensors="pt",
                              add_special_tokens=not getattr(tokenizer, "chat_template", None))
        else:
            video_ok = video and getattr(processor, "video_processor", None) is not None
            texts = [_render(processor, p, video_ok) for p in prompts]
            images = [im for p in prompts for im in p.images + (() if video_ok else p.video)]
            videos = [list(p.video) for p in prompts if p.video]
            kwargs: dict[str, Any] = {"text": texts, "padding": True, "return_tensors": "pt"}
            if images:
                kwargs["images"] = images
            if video_ok and videos:
                kwargs["videos"] = videos
            batch = processor(**kwargs)
    except CaptureError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, RuntimeError, OSError) as e:
        raise CaptureError(f"processor {type(processor).__name__} failed on request(s) "
                           f"{names}: {e}") from e
    inputs = dict(batch)
    for key, value in inputs.items():
        if isinstance(value, torch.Tensor):
            if value.is_floating_point() and dtype is not None:
                value = value.to(dtype)
            inputs[key] = value.to(device) if device else value
    return inputs


def prompt_tokens(processor: Any, family: Family, prompt: Prompt, *, video: bool = False) -> int:
    """Tokens the prompt takes alone (images expanded)."""
    return int(encode(processor, family, [prompt], video=video)["input_ids"].shape[1])


def plan_batches(lengths: Sequence[int], *, batch_size: int,
                 max_tokens: int) -> list[list[int]]:
    """Group request indices, in order, into batches of at most ``batch_size`` requests
    whose padded size (rows x longest) stays within ``max_tokens``."""
    if batch_size < 1:
        raise CaptureError(f"--batch-size must be >= 1, got {batch_size}")
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i, length in enumerate(lengths):
        if length > max_tokens:
            raise CaptureError(f"request {i} takes {length} tokens, more than --max-tokens "
                               f"{max_tokens}; raise --max-tokens or use smaller images")
        grown = max(longest, length)
        if current and (len(current) == batch_size or grown * (len(current) + 1) > max_tokens):
            batches.append(current)
            current, grown = [], length
        current.append(i)
        longest = grown
    if current:
        batches.append(current)
    return batches


def tiny_requests(family: Family, prompts: Sequence[Prompt]) -> list[Any]:
    """Synthetic stand-ins for prompts, for tiny models without a tiny processor: the same
    number of images (video frames count as images) and a text length from the words."""
    from macssim.capture._tiny import TinyRequest

    out = []
    for p in prompts:
        if family.vision is None and (p.images or p.video):
            raise CaptureError(f"request {p.name!r} has images, but {family.name} is a "
                               "text-only model")
        images = len(p.images) + len(p.video)
        words = len(p.text.split())
        out.append(TinyRequest(text_before=min(words // 2, 24), images=images,
                               text_after=min(words - words // 2, 24)))
    return out
