"""Loading a real checkpoint (hub id or local directory) and its processor.

transformers is an optional dependency (``pip install -e ".[capture]"``); it is imported
here, lazily, so ``import macssim.capture`` stays light.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from macssim._errors import CaptureError, MacssimError
from macssim._validate import (
    Limits,
    brief,
    check_int,
    cuda_problem,
    load_json,
    mapping,
    read_bounded,
)
from macssim.capture._families import Family, family_for_config

__all__ = ["DEVICES", "LoadedModel", "device_problem", "facts_for", "load_model", "pick_device",
           "require_transformers"]

INSTALL_HINT = 'pip install -e ".[capture]"'


def require_transformers() -> Any:
    """The transformers module, or a CaptureError saying how to install it."""
    try:
        import transformers
    except ImportError as e:
        raise CaptureError(f"capture needs transformers >= 5.23: {INSTALL_HINT} ({e})") from e
    major = int(transformers.__version__.split(".")[0])
    if major < 5:
        raise CaptureError(f"capture needs transformers >= 5.23 (routers return "
                           f"(logits, weights, ids) from 5.0 on); found "
                           f"{transformers.__version__}: {INSTALL_HINT}")
    return transformers


DEVICES = "auto, cpu, cuda or cuda:N"
"""What ``--device`` accepts (``auto``: a CUDA GPU when torch sees one, else the CPU)."""
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def device_problem(device: str | None) -> str | None:
    """Why ``device`` is not a device name capture accepts, or None; imports no torch."""
    if device is None or _DEVICE.fullmatch(device):
        return None
    return f"{device!r} is not a device capture can use: expected {DEVICES}"


def pick_device(device: str | None = None) -> str:
    """``cuda`` when a GPU is visible, else ``cpu``; an explicit choice wins, once checked:
    a name of ``DEVICES``, and for ``cuda``/``cuda:N`` a GPU torch can see."""
    problem = device_problem(device)
    if problem:
        raise CaptureError(f"--device: {problem}")
    import torch

    if device in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and (problem := cuda_problem(device)):
        raise CaptureError(f"--device {device}: {problem}; use --device cpu (or auto)")
    return device


def resolve_dtype(dtype: str | None, device: str) -> Any:
    """``auto``: bfloat16 on a GPU, float32 on CPU (bf16 matmuls on CPU are slow)."""
    import torch

    table = {"bfloat16": torch.bfloat16, "bf16": torch.bfloat16, "float16": torch.float16,
             "fp16": torch.float16, "float32": torch.float32, "fp32": torch.float32}
    if dtype in (None, "auto"):
        return torch.bfloat16 if device.startswith("cuda") else torch.float32
    try:
        return table[dtype]
    except KeyError:
        raise CaptureError(f"dtype {dtype!r} is not one of auto, {', '.join(table)}") from None


@dataclass
class LoadedModel:
    """A model ready to capture from, with what the trace's provenance records."""

    model: Any
    processor: Any
    """The model's own processor (vision families) or tokenizer (text-only families)."""
    family: Family
    model_id: str
    revision: str | None
    device: str


def load_model(model_id: str, *, revision: str | None = None, device: str | None = None,
               dtype: str | None = None, experts_implementation: str | None = None,
               trust_remote_code: bool = False) -> LoadedModel:
    """Load ``model_id`` (hub id or local checkpoint directory) with its processor."""
    from macssim.capture._compat import repair_model

    transformers = require_transformers()
    device = pick_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    try:
        config = transformers.AutoConfig.from_pretrained(
            model_id, revision=revision, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise CaptureError(f"{model_id}: cannot load its config.json: {e}") from e
    family = family_for_config(config, where=model_id)
    processor = load_processor(model_id, family, revision=revision,
                               trust_remote_code=trust_remote_code)
    cls = getattr(transformers, family.top_class)
    kwargs: dict[str, Any] = {"revision": revision, "dtype": torch_dtype,
                              "trust_remote_code": trust_remote_code}
    if device.startswith("cuda"):
        kwargs["device_map"] = device
    if experts_implementation:
        kwargs["experts_implementation"] = experts_implementation
    try:
        model = cls.from_pretrained(model_id, **kwargs)
    except (OSError, ValueError, RuntimeError) as e:
        raise CaptureError(f"{model_id}: cannot load weights as {family.top_class}: {e}") from e
    model.eval()
    repair_model(model)  # transformers bugs that break a family outright (_compat.py)
    if not device.startswith("cuda"):
        model.to(device)
    commit = getattr(config, "_commit_hash", None)
    return LoadedModel(model=model, processor=processor, family=family, model_id=model_id,
                       revision=revision or commit, device=device)


def load_processor(model_id: str, family: Family, *, revision: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    """The checkpoint's own processor (vision families) or tokenizer (text-only)."""
    transformers = require_transformers()
    auto = transformers.AutoProcessor if family.vision else transformers.AutoTokenizer
    what = "processor" if family.vision else "tokenizer"
    try:
        processor = auto.from_pretrained(model_id, revision=revision,
                                         trust_remote_code=trust_remote_code)
    except ImportError as e:  # e.g. a video processor that needs torchvision
        raise CaptureError(f"{model_id}: its {what} needs a package that is not "
                           f"installed: {e}") from e
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CaptureError(f"{model_id}: missing {what}: cannot load it ({e}); the "
                           f"checkpoint needs its preprocessor_config.json and tokenizer "
                           "files") from e
    if family.vision and not hasattr(processor, "image_processor"):
        raise CaptureError(f"{model_id}: missing processor: AutoProcessor returned "
                           f"{type(processor).__name__}, which has no image processor")
    return processor


def facts_for(spec: str) -> Any:
    """Model facts for imported traces: a macssim model preset name, or a Hugging Face
    ``config.json`` (file or checkpoint directory; no weights needed). For a config, the
    model is built on torch's meta device (no memory) to find its MoE layers the same way
    a capture does."""
    from macssim._errors import TraceError
    from macssim.trace import get_model_preset

    path = Path(spec)
    if not path.exists():
        try:
            return get_model_preset(spec)
        except TraceError as e:
            raise CaptureError(f"{e}; or give the path of the model's config.json") from None
    import torch

    from macssim.capture._families import model_facts
    from macssim.capture._sites import find_sites

    transformers = require_transformers()
    config_file = path / "config.json" if path.is_dir() else path
    data = _read_config(config_file)
    where = str(config_file)
    # Third-party code turns the untrusted sizes into modules: any exception it raises on
    # a bad config is this file's fault, reported as such (never a traceback).
    try:
        model_type = data.pop("model_type", None)
        config = transformers.AutoConfig.for_model(model_type, **data)
        family = family_for_config(config, where=where)
        with torch.device("meta"):
            skeleton = getattr(transformers, family.top_class)(config)
        _, _, moe_layers = find_sites(skeleton, family)
    except CaptureError as e:
        if where in str(e):
            raise
        raise CaptureError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - see above
        raise CaptureError(f"{where}: transformers cannot build a model from this config "
                           f"({type(e).__name__}: {brief(str(e))})") from None
    dtype = str(getattr(config, "dtype", None) or "bfloat16").replace("torch.", "")
    try:
        return model_facts(config, family, moe_layers, name=str(spec), dtype=dtype,
                           source=f"{path} (transformers {transformers.__version__})")
    except MacssimError as e:
        raise CaptureError(f"{where}: {e}") from None


_LAYER_KEYS = re.compile(r"^(num_hidden_layers|num_layers|n_layers|depth)$")
_EXPERT_KEYS = re.compile(r"^(num_experts|n_routed_experts|num_local_experts|moe_num_experts"
                          r"|num_shared_experts|n_shared_experts)$")
_MAX_EXPERT_MODULES = 1 << 18
"""Layers × experts a config may ask for: building its skeleton, even on the meta device,
makes a Python module per expert (DeepSeek-V3: 61 × 256 = 15,616)."""


def _read_config(path: Path) -> dict:
    """A config.json as a dict whose sizes are plain, bounded integers — checked before
    transformers builds anything from them."""
    try:
        with open(path, "rb") as fh:
            blob = read_bounded(fh, Limits.MAX_JSON_BYTES)
    except (OSError, ValueError) as e:
        raise CaptureError(f"{path}: cannot read a transformers config "
                           f"({getattr(e, 'strerror', None) or e})") from e
    data = load_json(blob, str(path), what="config.json", error=CaptureError)
    data = mapping(data, str(path), "", error=CaptureError)
    layers, experts = [1], [1]
    for field, value in _size_fields(data, ""):
        name = field.rsplit(".", 1)[-1]
        if _LAYER_KEYS.match(name):
            layers.append(check_int(value, str(path), field, low=0, high=Limits.MAX_LAYERS,
                                    error=CaptureError))
        elif _EXPERT_KEYS.match(name) or "expert" in name and not name.endswith("_size"):
            experts.append(check_int(value, str(path), field, low=0, high=Limits.MAX_EXPERTS,
                                     error=CaptureError))
        elif name.endswith(("_size", "_dim", "_heads")) or name.startswith("num_"):
            # only bounded above: a negative size fails in transformers, reported as such
            check_int(value, str(path), field, high=Limits.MAX_HIDDEN, error=CaptureError)
    if max(layers) * max(experts) > _MAX_EXPERT_MODULES:
        raise CaptureError(f"{path}: {max(layers)} layers × {max(experts)} experts is more than "
                           f"{_MAX_EXPERT_MODULES} expert modules; no released MoE model is "
                           "near that")
    return data


def _size_fields(data: dict, prefix: str, depth: int = 0):
    """(dotted field, value) of every integer-looking size in a config and its sub-configs
    (``text_config``, ``vision_config``…); bools and lists are not sizes."""
    if depth > 4:
        return
    for key, value in data.items():
        field = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from _size_fields(value, f"{field}.", depth + 1)
        elif isinstance(value, int | float | str) and not isinstance(value, bool) and (
                key.endswith(("_size", "_dim", "_heads", "_layers", "_experts"))
                or key.startswith(("num_", "n_")) or key in ("depth", "vocab_size")):
            yield field, value  # checked as an int: a float or string size is refused
