"""Inputs to capture on: a built-in prompt set whose images are drawn here with PIL, or the
user's JSONL file.

Why drawn: routing depends on what an image holds. A page of text, a bar chart, a
photograph-like scene and a few video frames give the flat backgrounds (redundant visual
tokens), fine text and edges (salient tokens) and image/text mixes that MACS reacts to,
with nothing to download and nothing large shipped. Everything is deterministic.

JSONL input, one request per line::

    {"prompt": "What does the chart show?", "image": "chart.png"}
    {"prompt": "Compare them.", "images": ["a.jpg", "b.jpg"], "name": "pair"}
    {"prompt": "What happens?", "video": ["f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg"]}
    {"prompt": "Explain MoE routing in two sentences."}

Paths are relative to the JSONL file. A video is a list of frame images (or a folder of
them, sorted by name).
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macssim._errors import CaptureError

__all__ = ["Prompt", "builtin_prompts", "load_inputs"]

IMAGE_SIZE_PX = 448
"""Side of the built-in images: 196 visual tokens on Qwen3-VL (16-px patches, 2x2 merge)."""
VIDEO_FRAMES = 4
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff"}


@dataclass(frozen=True)
class Prompt:
    """One request: a text prompt with its images and video frames (PIL images)."""

    name: str
    scenario: str
    """document, chart, photo, video, text or user."""
    text: str
    images: tuple[Any, ...] = ()
    video: tuple[Any, ...] = ()
    """Frames of one video, in order."""
    sources: tuple[str, ...] = ()
    """Where each image came from (file path or ``generated:<what>``), for provenance."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "scenario": self.scenario, "prompt": self.text,
                "images": len(self.images), "video_frames": len(self.video),
                "sources": list(self.sources)}


def _font(size: int) -> Any:
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


_WORDS = ("expert routing capacity token image layer batch model cluster network latency "
          "throughput gate score vision text balance load memory bandwidth the of and to a in "
          "is for on with that by this as are from").split()


def _document(rng: random.Random) -> Any:
    """A white page: title, two paragraphs of small text, a ruled table."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (IMAGE_SIZE_PX, IMAGE_SIZE_PX), (252, 252, 250))
    draw = ImageDraw.Draw(img)
    draw.text((24, 18), "Quarterly Report: Expert Load", fill=(10, 10, 10), font=_font(22))
    y = 60
    for _ in range(2):
        for _ in range(7):
            line = " ".join(rng.choice(_WORDS) for _ in range(9))
            draw.text((24, y), line, fill=(30, 30, 30), font=_font(13))
            y += 18
        y += 12
    for row in range(5):
        for col in range(4):
            x0, y0 = 24 + col * 100, y + row * 26
            draw.rectangle((x0, y0, x0 + 100, y0 + 26), outline=(60, 60, 60))
            label = "GPU" if row == 0 else f"{rng.randint(10, 99)}.{rng.randint(0, 9)}"
            draw.text((x0 + 8, y0 + 6), label, fill=(20, 20, 20), font=_font(12))
    return img


def _chart(rng: random.Random) -> Any:
    """A bar chart on a flat background, with axes, ticks, labels and a title."""
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (IMAGE_SIZE_PX, IMAGE_SIZE_PX), (245, 247, 250))
    draw = ImageDraw.Draw(img)
    draw.text((60, 14), "Tokens per expert (layer 12)", fill=(20, 20, 40), font=_font(18))
    x0, y0, x1, y1 = 50, 60, IMAGE_SIZE_PX - 20, IMAGE_SIZE_PX - 50
    draw.line((x0, y1, x1, y1), fill=(0, 0, 0), width=2)
    draw.line((x0, y0, x0, y1), fill=(0, 0, 0), width=2)
    colors = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88)]
    bars = 8
    width = (x1 - x0) // bars
    for i in range(bars):
        height = rng.randint(30, y1 - y0 - 10)
        left = x0 + i * width + 6
        draw.rectangle((left, y1 - height, left + width - 12, y1), fill=colors[i % 4])
        draw.text((left + 4, y1 + 6), f"E{i}", fill=(0, 0, 0), font=_font(12))
    for tick in range(0, 5):
        y = y1 - tick * (y1 - y0) // 4
        draw.line((x0 - 5, y, x0, y), fill=(0, 0, 0))
        draw.text((8, y - 7), str(tick * 250), fill=(0, 0, 0), font=_font(11))
    return img


def _photo(rng: random.Random) -> Any:
    """A photograph-like scene: sky gradient, sun, mountains, textured grass, a house."""
    import numpy as np
    from PIL import Image, ImageDraw

    size = IMAGE_SIZE_PX
    rows = np.linspace(0.0, 1.0, size)[:, None, None]
    sky = (np.array([90, 150, 230]) * (1 - rows) + np.array([200, 225, 250]) * rows)
    arr = np.broadcast_to(sky, (size, size, 3)).copy()
    noise = np.random.default_rng(rng.randint(0, 2**31)).normal(0, 18, (size, size, 3))
    grass = np.array([60, 130, 50]) + noise
    horizon = int(size * 0.62)
    arr[horizon:] = grass[horizon:]
    img = Image.fromarray(arr.clip(0, 255).astype("uint8"))
    draw = ImageDraw.Draw(img)
    draw.ellipse((size - 120, 40, size - 50, 110), fill=(255, 230, 120))
    draw.polygon([(0, horizon), (120, 150), (230, horizon)], fill=(110, 110, 125))
    draw.polygon([(150, horizon), (300, 120), (size, horizon)], fill=(90, 95, 110))
    draw.rectangle((60, horizon + 30, 160, horizon + 110), fill=(180, 60, 50))
    draw.polygon([(50, horizon + 30), (110, horizon - 10), (170, horizon + 30)],
                 fill=(90, 40, 30))
    draw.rectangle((95, horizon + 70, 120, horizon + 110), fill=(60, 40, 20))
    return img


def _video(rng: random.Random) -> tuple[Any, ...]:
    """Frames of a ball crossing a room: mostly static background, one moving object."""
    from PIL import Image, ImageDraw

    frames = []
    for f in range(VIDEO_FRAMES):
        img = Image.new("RGB", (IMAGE_SIZE_PX, IMAGE_SIZE_PX), (235, 228, 215))
        draw = ImageDraw.Draw(img)
        draw.rectangle((0, 300, IMAGE_SIZE_PX, IMAGE_SIZE_PX), fill=(150, 110, 80))
        draw.rectangle((300, 80, 420, 200), outline=(80, 80, 80), width=4)
        x = 40 + f * 100
        draw.ellipse((x, 240, x + 60, 300), fill=(200, 30, 30))
        draw.text((12, 12), f"t={f}", fill=(0, 0, 0), font=_font(14))
        frames.append(img)
    return tuple(frames)


def builtin_prompts(seed: int = 0) -> list[Prompt]:
    """The built-in prompt set: document, chart, photo, video, and two text-only prompts."""
    rng = random.Random(seed)
    return [
        Prompt("doc-ocr", "document", "Read the report and list every number in the table.",
               (_document(rng),), sources=("generated:document",)),
        Prompt("chart-qa", "chart", "Which expert receives the most tokens, and about how many?",
               (_chart(rng),), sources=("generated:chart",)),
        Prompt("photo-caption", "photo", "Describe this picture in one sentence.",
               (_photo(rng),), sources=("generated:photo",)),
        Prompt("video-qa", "video", "What moves in this video, and in which direction?",
               video=_video(rng), sources=("generated:video",)),
        Prompt("chat-reasoning", "text", "A cluster has 8 GPUs and 128 experts. If each GPU "
               "holds the same number of experts, how many does each hold? Explain briefly."),
        Prompt("chat-short", "text", "Give three tips for writing clear documentation."),
    ]


def _open_image(path: Path, where: str) -> Any:
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise CaptureError(f"{where}: image {str(path)!r} does not exist")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError) as e:
        raise CaptureError(f"{where}: image {str(path)!r} will not decode: {e}") from e


def _paths(value: Any, key: str, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    raise CaptureError(f'{where}: "{key}" must be a path or a list of paths, got '
                       f"{type(value).__name__}")


def _frames(value: Any, base: Path, where: str) -> list[Path]:
    if isinstance(value, str) and (base / value).is_dir():
        folder = base / value
        frames = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not frames:
            raise CaptureError(f"{where}: video folder {str(folder)!r} holds no frame images")
        return frames
    if isinstance(value, str):
        raise CaptureError(f'{where}: "video" must list frame images (or name a folder of '
                           f"them); {value!r} is not a folder, and video files are not decoded")
    return [base / p for p in _paths(value, "video", where)]


def load_inputs(path: str | os.PathLike) -> list[Prompt]:
    """Read a JSONL file of requests (module docstring); raises CaptureError naming the
    file, the line and the field at fault."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as e:
        raise CaptureError(f"{path}: cannot read inputs: {e.strerror or e}") from e
    prompts: list[Prompt] = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            record = json.loads(line)
        except ValueError as e:
            raise CaptureError(f"{where}: not valid JSON: {e}") from e
        if not isinstance(record, dict):
            raise CaptureError(f"{where}: expected a JSON object, got {type(record).__name__}")
        unknown = sorted(set(record) - {"prompt", "image", "images", "video", "name"})
        if unknown:
            raise CaptureError(f"{where}: unknown field(s) {unknown}; known: prompt, image, "
                               "images, video, name")
        text = record.get("prompt")
        if not isinstance(text, str) or not text.strip():
            raise CaptureError(f'{where}: "prompt" must be a non-empty string')
        image_paths = [path.parent / p for key in ("image", "images") if key in record
                       for p in _paths(record[key], key, where)]
        frame_paths = _frames(record["video"], path.parent, where) if "video" in record else []
        images = tuple(_open_image(p, where) for p in image_paths)
        video = tuple(_open_image(p, where) for p in frame_paths)
        name = str(record.get("name") or f"line{number}")
        scenario = "video" if video else "user" if images else "text"
        prompts.append(Prompt(name, scenario, text, images, video,
                              tuple(str(p) for p in image_paths + frame_paths)))
    if not prompts:
        raise CaptureError(f"{path}: holds no requests (one JSON object per line)")
    return prompts
