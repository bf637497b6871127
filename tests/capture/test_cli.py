"""``macssim capture`` through click's runner, and the stage's public edges."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

import macssim.capture
from macssim import CaptureError
from macssim.cli import main
from macssim.trace import open_trace


def test_list_families_names_every_family():
    result = CliRunner().invoke(main, ["capture", "--list-families"])
    assert result.exit_code == 0
    for name in ("qwen3-vl-moe", "glm4v-moe", "ernie4.5-vl", "llama4", "aria", "qwen3.5-moe",
                 "internvl-moe", "mixtral", "olmoe", "qwen2-moe", "qwen3-moe", "deepseek-v2",
                 "deepseek-v3"):
        assert f"\n{name} " in "\n" + result.output


def test_tiny_capture_prints_a_table_and_writes_the_trace(tmp_path):
    out = tmp_path / "tiny.mtrace"
    result = CliRunner().invoke(main, ["capture", "--tiny", "deepseek-v3", "-o", str(out),
                                       "--decode-steps", "1", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert f"wrote {out}" in result.output
    for row in ("model", "requests", "steps", "tokens", "modality", "time"):
        assert f"  {row}" in result.output
    trace = open_trace(out)
    assert trace.provenance["command"].startswith("macssim")
    assert trace.model.score_function == "sigmoid" and trace.model.moe_layers == (1, 2)


@pytest.mark.parametrize(("args", "message"), [
    (["--tiny", "gpt2"], "Error: unknown model family 'gpt2'; supported: qwen3-vl-moe"),
    ([], "give exactly one of --model, --tiny"),
    (["--tiny", "mixtral", "--model", "x"], "give exactly one of"),
    (["--tiny", "mixtral", "--batch-size", "0"], "Invalid value for '--batch-size'"),
])
def test_bad_invocations_fail_in_one_line(args, message, tmp_path):
    result = CliRunner().invoke(main, ["capture", *args, "-o", str(tmp_path / "x.mtrace")])
    assert result.exit_code != 0
    assert message in result.output
    assert "Traceback" not in result.output


def test_import_vllm_from_the_command_line(tmp_path):
    rng = np.random.default_rng(0)
    ids = np.stack([np.stack([rng.choice(128, 8, replace=False) for _ in range(48)])
                    for _ in range(6)])
    np.save(tmp_path / "r.npy", ids)
    out = tmp_path / "v.mtrace"
    runner = CliRunner()
    missing = runner.invoke(main, ["capture", "--import-vllm", str(tmp_path / "r.npy")])
    assert missing.exit_code != 0 and "--facts is required" in missing.output
    result = runner.invoke(main, ["capture", "--import-vllm", str(tmp_path / "r.npy"),
                                  "--facts", "qwen3-vl-30b-a3b", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "ids only" in result.output
    step = open_trace(out).step(0)
    np.testing.assert_array_equal(step.topk_ids, ids.transpose(1, 0, 2))


def test_import_sglang_from_the_command_line(tmp_path):
    ids = [[[-1] * 8] * 2] + [[[1, 4] + [-1] * 6, [7, 2] + [-1] * 6]] * 3  # [4 layers][2][8]
    dump = {"records": [{"forward_pass_id": 0, "rank": 3, "input_ids": [5, 6],
                         "positions": [0, 1], "extend_seq_lens": [2], "forward_mode": 1,
                         "topk_ids_of_layer": ids}]}
    (tmp_path / "d.json").write_text(json.dumps(dump))
    config = tmp_path / "config.json"
    config.write_text(json.dumps({"model_type": "qwen3_moe", "num_hidden_layers": 4,
                                  "num_experts": 8, "num_experts_per_tok": 2,
                                  "hidden_size": 16, "intermediate_size": 16,
                                  "moe_intermediate_size": 8, "num_attention_heads": 2,
                                  "num_key_value_heads": 1, "head_dim": 8,
                                  "vocab_size": 32, "mlp_only_layers": [0]}))
    out = tmp_path / "s.mtrace"
    result = CliRunner().invoke(main, ["capture", "--import-sglang", str(tmp_path / "d.json"),
                                       "--facts", str(config), "--rank", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    step = open_trace(out).step(0)
    np.testing.assert_array_equal(step.topk_ids[:, 1], [[7, 2]] * 3)
    assert step.topk_ids.shape == (3, 2, 2)  # layer 0 is dense (mlp_only_layers)


def test_facts_from_a_config_json(tmp_path):
    """--facts config.json builds the model on the meta device to find its MoE layers."""
    pytest.importorskip("transformers")
    from macssim.capture import facts_for
    from macssim.capture._tiny import tiny_config

    config = tiny_config("glm4v-moe")
    config.save_pretrained(tmp_path)
    facts = facts_for(str(tmp_path / "config.json"))
    assert facts.moe_layers == (1, 2) and facts.num_layers == 3  # first_k_dense_replace 1
    assert (facts.num_experts, facts.top_k, facts.num_shared_experts) == (8, 2, 1)
    assert facts.score_function == "sigmoid" and facts.vision_flops_per_token > 0
    with pytest.raises(CaptureError, match="unknown model preset 'nope'"):
        facts_for("nope")


def test_public_surface():
    for name in macssim.capture.__all__:
        assert hasattr(macssim.capture, name), name
    assert {"record_routing", "capture_trace", "list_families", "build_tiny_model",
            "import_vllm", "import_sglang"} <= set(macssim.capture.__all__)


def test_importing_capture_leaves_transformers_unloaded():
    code = ("import sys, macssim, macssim.capture, macssim.cli.capture; "
            "print(json.dumps(['transformers' in sys.modules, 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", "import json; " + code], check=True,
                         capture_output=True, text=True).stdout
    assert json.loads(out) == [False, False]


def test_missing_transformers_says_how_to_install(monkeypatch):
    from macssim.capture._load import require_transformers

    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(CaptureError, match=r'pip install -e "\.\[capture\]"'):
        require_transformers()


def _fails_in_one_line(result):
    assert result.exit_code != 0
    assert isinstance(result.exception, SystemExit), result.exception  # no traceback
    assert "Traceback" not in result.output
    assert "--device" in result.output


@pytest.mark.parametrize("device", ["tpu", "CUDA", "cuda:x", "cpu:0", "gpu"])
def test_unknown_device_is_a_bad_parameter(device, tmp_path):
    """Refused by name, before any model is built: says what --device accepts."""
    out = tmp_path / "x.mtrace"
    result = CliRunner().invoke(main, ["capture", "--tiny", "qwen3-vl-moe", "--device", device,
                                       "-o", str(out), "--no-progress"])
    _fails_in_one_line(result)
    assert f"Invalid value for '--device': {device!r} is not a device" in result.output
    assert "expected auto, cpu, cuda or cuda:N" in result.output
    assert not out.exists()


@pytest.mark.parametrize("device", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_fails_in_one_line(device, tmp_path, monkeypatch):
    """What torch sees is faked (no GPU), so the test means the same on a GPU machine."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    out = tmp_path / "x.mtrace"
    result = CliRunner().invoke(main, ["capture", "--tiny", "qwen3-vl-moe", "--device", device,
                                       "-o", str(out), "--no-progress"])
    _fails_in_one_line(result)
    assert f"Error: --device {device}: no CUDA GPU is visible to torch" in result.output
    assert "use --device cpu (or auto)" in result.output
    assert not out.exists()


def test_cuda_index_past_the_gpus_fails_in_one_line(tmp_path, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    result = CliRunner().invoke(main, ["capture", "--tiny", "mixtral", "--device", "cuda:2",
                                       "-o", str(tmp_path / "x.mtrace"), "--no-progress"])
    _fails_in_one_line(result)
    assert "--device cuda:2: torch sees 2 CUDA GPUs, cuda:0 to cuda:1" in result.output


def test_library_refuses_an_unknown_device_too(tmp_path):
    from macssim.capture import capture_trace

    with pytest.raises(CaptureError, match=r"--device: 'tpu' is not a device capture can use: "
                                           r"expected auto, cpu, cuda or cuda:N"):
        capture_trace(tmp_path / "x.mtrace", tiny="mixtral", device="tpu")


@pytest.mark.parametrize(("family", "batch_size"), [("llama4", 8), ("qwen3-vl-moe", 1)])
def test_tiny_capture_with_decode_steps(family, batch_size, tmp_path):
    """What transformers 5.24 broke, end to end from the command line: Llama 4's forward,
    and decode calls that carry only the renamed KV cache (one request per batch: no
    padding, so ``generate`` passes no attention mask). Each batch: one prefill, then up
    to --decode-steps decode steps with one token per live request (random weights may
    emit end-of-sequence, which ends a request), positions continuing."""
    out = tmp_path / "t.mtrace"
    result = CliRunner().invoke(main, ["capture", "--tiny", family, "-o", str(out),
                                       "--decode-steps", "2", "--batch-size", str(batch_size),
                                       "--no-progress"])
    assert result.exit_code == 0, result.output
    trace = open_trace(out)
    steps = list(trace)
    batches = trace.provenance["batches"]
    lengths = np.array([i["prompt_tokens"] for i in trace.provenance["inputs"]])
    starts = [i for i, s in enumerate(steps) if s.kind == "prefill"]
    assert len(starts) == len(batches) and starts[0] == 0  # decode never taken for prefill
    assert sum(s.kind == "decode" for s in steps) >= len(batches)
    for batch, begin, end in zip(batches, starts, [*starts[1:], len(steps)], strict=True):
        prefill, *decode = steps[begin:end]
        assert prefill.num_tokens == lengths[batch].sum()
        assert len(decode) <= 2  # fewer only once every request of the batch has ended
        live = set(batch)
        for t, step in enumerate(decode):
            ids = step.request_id.tolist()
            assert len(ids) == len(set(ids)) == step.num_tokens >= 1  # one token each
            assert set(ids) <= live
            live = set(ids)
            np.testing.assert_array_equal(step.position, lengths[step.request_id] + t)


def test_capture_keeps_a_slice_in_the_format_asked_and_estimates_first(tmp_path):
    """--sample K runs every K-th batch, --steps N keeps the first N steps, --format and
    --scores reach the file; the size estimate is printed before the run."""
    full, part = tmp_path / "full.mtrace", tmp_path / "part.mtrace"
    inputs = tmp_path / "in.jsonl"
    inputs.write_text("".join(json.dumps({"prompt": f"request {i}: " + "word " * (3 + i)}) + "\n"
                              for i in range(5)))
    common = ["--tiny", "mixtral", "--inputs", str(inputs), "--batch-size", "1",
              "--decode-steps", "1", "--no-progress"]
    res = CliRunner().invoke(main, ["capture", *common, "-o", str(full), "--format", "v1"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(main, ["capture", *common, "-o", str(part), "--sample", "2",
                                    "--steps", "3", "--scores", "all"])
    assert res.exit_code == 0, res.output
    assert res.output.index("writing ") < res.output.index(f"wrote {part}")
    whole, sliced = open_trace(full), open_trace(part)
    assert whole.version == 1 and sliced.version == 2 and sliced.scores_complete
    full_steps = list(whole)
    # batch b (one request each) is steps 2b (prefill) and 2b + 1 (decode)
    requests = [int(s.request_id[0]) for s in full_steps if s.kind == "prefill"]
    assert len(requests) == 5
    got = list(sliced)
    assert len(got) == 3
    assert [s.kind for s in got] == ["prefill", "decode", "prefill"]
    assert [int(s.request_id[0]) for s in got[::2]] == requests[0:4:2]
    np.testing.assert_array_equal(got[0].topk_ids, full_steps[0].topk_ids)
