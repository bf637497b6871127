"""A tiny processor of the real Qwen3-VL processor class, built locally (no download).

It lets ``--tiny qwen3-vl-moe`` and the tests run the same input-building code as a real
checkpoint: the real ``Qwen3VLProcessor`` (chat template, image-token expansion,
``mm_token_type_ids``) over a real ``Qwen2VLImageProcessorPil`` with tiny sizes, and a
character-level tokenizer whose special-token ids match the tiny model's config.
Video frames go in as images: the Qwen3-VL video processor needs torchvision.
"""

from __future__ import annotations

from typing import Any

from macssim.capture import _tiny as tiny

__all__ = ["TINY_PROCESSOR_FAMILIES", "build_tiny_processor"]

TINY_PROCESSOR_FAMILIES = ("qwen3-vl-moe",)
"""Families whose ``--tiny`` model comes with a tiny processor."""

_SPECIALS = {"<|pad|>": tiny.PAD, "<|bos|>": tiny.BOS, "<|eos|>": tiny.EOS,
             "<|image_pad|>": tiny.IMAGE, "<|video_pad|>": tiny.VIDEO,
             "<|vision_start|>": tiny.VSTART, "<|vision_end|>": tiny.VEND, "<unk>": 15}
_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789 .,:;?!'\"()-%/=+\n"
_TEMPLATE = (
    "{% for m in messages %}<|bos|>{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif c['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endfor %}"
    "{% if add_generation_prompt %}\n{% endif %}")


def _tokenizer() -> Any:
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = dict(_SPECIALS)
    for i, char in enumerate(_CHARS):
        vocab[char] = tiny.FIRST_TEXT_ID + i
    assert max(vocab.values()) < tiny.VOCAB
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.normalizer = normalizers.Lowercase()
    core.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token="<|pad|>", bos_token="<|bos|>",
        eos_token="<|eos|>", unk_token="<unk>", padding_side="left",
        additional_special_tokens=["<|image_pad|>", "<|video_pad|>", "<|vision_start|>",
                                   "<|vision_end|>"])


def build_tiny_processor(family: str, *, max_side_px: int = 96) -> Any:
    """The tiny processor of ``family`` (one of ``TINY_PROCESSOR_FAMILIES``): images are
    resized to at most ``max_side_px`` squared pixels, i.e. at most
    ``(max_side_px / 16) ** 2`` visual tokens each."""
    import transformers

    if family not in TINY_PROCESSOR_FAMILIES:
        raise ValueError(f"no tiny processor for {family!r}")

    class TinyQwen3VLProcessor(transformers.Qwen3VLProcessor):
        """Qwen3VLProcessor without its torchvision-only video processor."""

        def __init__(self, image_processor: Any = None, tokenizer: Any = None,
                     chat_template: str | None = None, **kwargs: Any) -> None:
            super().__init__(image_processor, tokenizer, None, chat_template=chat_template,
                             **kwargs)
            self.video_processor = None

    image_processor = transformers.Qwen2VLImageProcessorPil(
        patch_size=16, merge_size=1, temporal_patch_size=2,
        size={"shortest_edge": 32 * 32, "longest_edge": max_side_px * max_side_px})
    return TinyQwen3VLProcessor(image_processor=image_processor, tokenizer=_tokenizer(),
                                chat_template=_TEMPLATE)
