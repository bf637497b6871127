"""Prompts, JSONL inputs, batching under a token budget, and the processor path."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from macssim import CaptureError
from macssim.capture import builtin_prompts, get_family, load_inputs
from macssim.capture._inputs import encode, plan_batches


def test_plan_batches_respects_count_and_padded_budget():
    # rows x longest must stay <= max_tokens; order is kept
    assert plan_batches([5, 5, 5, 5, 5], batch_size=2, max_tokens=100) == [[0, 1], [2, 3], [4]]
    assert plan_batches([10, 30, 10, 10], batch_size=8, max_tokens=60) == [[0, 1], [2, 3]]
    assert plan_batches([40, 10, 10], batch_size=8, max_tokens=60) == [[0], [1, 2]]
    for lengths in ([3, 9, 1, 7, 7, 2, 8], [1] * 20, [50, 1, 50, 1]):
        batches = plan_batches(lengths, batch_size=3, max_tokens=60)
        assert [i for b in batches for i in b] == list(range(len(lengths)))
        for b in batches:
            assert len(b) <= 3 and len(b) * max(lengths[i] for i in b) <= 60
    with pytest.raises(CaptureError, match="request 1 takes 70 tokens.*--max-tokens 60"):
        plan_batches([5, 70], batch_size=2, max_tokens=60)


def test_builtin_prompts_span_the_scenarios_and_are_deterministic():
    prompts = builtin_prompts(seed=0)
    assert {p.scenario for p in prompts} == {"document", "chart", "photo", "video", "text"}
    again = builtin_prompts(seed=0)
    for a, b in zip(prompts, again, strict=True):
        for x, y in zip(a.images + a.video, b.images + b.video, strict=True):
            assert np.array_equal(np.asarray(x), np.asarray(y))
    for p in prompts:
        for img in p.images + p.video:
            arr = np.asarray(img).astype(np.int64)
            assert arr.shape == (448, 448, 3)
            # real structure: a dominant flat background plus detail
            packed = (arr[..., 0] << 16) | (arr[..., 1] << 8) | arr[..., 2]
            values, counts = np.unique(packed, return_counts=True)
            assert len(values) > 8
            if p.scenario != "photo":
                assert counts.max() / counts.sum() > 0.3


def _write(tmp_path, lines):
    path = tmp_path / "in.jsonl"
    path.write_text("\n".join(json.dumps(x) if not isinstance(x, str) else x
                              for x in lines) + "\n")
    return path


def test_load_inputs_reads_images_frames_and_text(tmp_path):
    for name in ("a.png", "f0.png", "f1.png"):
        Image.new("RGB", (20, 10), (10, 200, 30)).save(tmp_path / name)
    (tmp_path / "frames").mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(tmp_path / "frames" / f"{i}.jpg")
    path = _write(tmp_path, [
        {"prompt": "one", "image": "a.png"},
        {"prompt": "video", "video": ["f0.png", "f1.png"], "name": "clip"},
        {"prompt": "folder", "video": "frames"},
        "",
        {"prompt": "just text"},
    ])
    prompts = load_inputs(path)
    assert [p.name for p in prompts] == ["line1", "clip", "line3", "line5"]
    assert [len(p.images) for p in prompts] == [1, 0, 0, 0]
    assert [len(p.video) for p in prompts] == [0, 2, 3, 0]
    assert [p.scenario for p in prompts] == ["user", "video", "video", "text"]
    assert prompts[0].images[0].size == (20, 10)


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", r"line 1: not valid JSON"),
    ({"image": "a.png"}, r'line 1: "prompt" must be a non-empty string'),
    ({"prompt": "x", "img": "a.png"}, r"line 1: unknown field\(s\) \['img'\]"),
    ({"prompt": "x", "image": "missing.png"}, r"line 1: image .*missing\.png.* does not exist"),
    ({"prompt": "x", "video": "clip.mp4"}, r"video files are not decoded"),
    ({"prompt": "x", "images": [1, 2]}, r'"images" must be a path or a list of paths'),
])
def test_load_inputs_errors_name_file_and_line(tmp_path, line, message):
    path = _write(tmp_path, [line])
    with pytest.raises(CaptureError, match=message):
        load_inputs(path)


def test_empty_inputs_file(tmp_path):
    path = _write(tmp_path, [""])
    with pytest.raises(CaptureError, match="holds no requests"):
        load_inputs(path)


def test_processor_expands_images_and_left_pads():
    pytest.importorskip("transformers")
    from macssim.capture._tiny_processor import build_tiny_processor

    processor = build_tiny_processor("qwen3-vl-moe", max_side_px=64)
    prompts = builtin_prompts()
    doc = prompts[0]
    chat = next(p for p in prompts if p.scenario == "text")
    batch = encode(processor, get_family("qwen3-vl-moe"), [doc, chat])
    mask = batch["attention_mask"]
    short = int(mask.sum(1).argmin())
    assert mask[short, 0] == 0 and mask[:, -1].all()  # left padding
    grid = batch["image_grid_thw"]
    assert grid.shape == (1, 3)
    image_tokens = int(grid.prod())  # merge size 1: one token per patch
    assert int((batch["mm_token_type_ids"][0] == 1).sum()) == image_tokens
    assert int((batch["input_ids"][0] == processor.image_token_id).sum()) == image_tokens
    assert image_tokens <= (64 // 16) ** 2
    video = next(p for p in prompts if p.scenario == "video")
    frames = encode(processor, get_family("qwen3-vl-moe"), [video])
    assert frames["image_grid_thw"].shape[0] == len(video.video)  # no video processor
