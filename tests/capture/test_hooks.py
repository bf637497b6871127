"""The hooks against the model itself, for every supported family (tiny models of the real
transformers classes): outputs unchanged, ids and weights equal what the experts were
handed, scores equal the model's own ``output_router_logits``, modality and padding right,
and a padded batch routes each request as it routes alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from macssim.capture import TinyRequest, get_family, list_families, record_routing, tiny_batch
from macssim.capture._tiny import IMAGE

FAMILIES = [f.name for f in list_families()]

REQUESTS = [TinyRequest(3, 1, 2), TinyRequest(6, 0, 5), TinyRequest(2, 2, 1)]


def _requests(family):
    if get_family(family).vision:
        return REQUESTS
    return [TinyRequest(r.text_before, 0, r.text_after) for r in REQUESTS]


def _inputs(model, family, requests=None, seed=0):
    return tiny_batch(family, model.config, requests or _requests(family), seed=seed)


def _dispatched(model, family, inputs):
    """Reference: what each layer's experts module was handed, ``(ids [T, k], weights
    [T, k])`` per decoder layer over all B*S rows, from forward pre-hooks on the
    ``...Experts`` modules (the ids actually dispatched). ERNIE's two expert blocks per
    layer are merged with its ``moe_mm_token_type_ids`` (vision ids offset by E)."""
    fam = get_family(family)
    seen: dict[int, list] = {}
    handles = []
    for name, module in model.named_modules():
        if not type(module).__name__.endswith("Experts") or ".layers." not in name:
            continue
        layer = int(name.split(".layers.")[1].split(".")[0])
        vision = ".vision_moe." in name

        def hook(mod, args, layer=layer, vision=vision):
            seen.setdefault(layer, []).append((vision, args[1].clone(), args[2].clone()))

        handles.append(module.register_forward_pre_hook(hook))
    try:
        with torch.no_grad():
            model(**inputs)
    finally:
        for h in handles:
            h.remove()
    rows = inputs["input_ids"].numel()
    out = {}
    for layer, calls in sorted(seen.items()):
        if not fam.split_sets:
            (_, ids, w), = calls
            out[layer] = (ids.long(), w.float())
            continue
        mask = inputs["moe_mm_token_type_ids"].reshape(-1).bool()
        num = model.config.text_config.moe_num_experts
        k = calls[0][1].shape[1]
        ids = torch.zeros((rows, k), dtype=torch.long)
        w = torch.zeros((rows, k))
        for vision, i, ww in calls:
            sel = mask if vision else ~mask
            ids[sel] = i.long() + (num if vision else 0)
            w[sel] = ww.float()
        out[layer] = (ids, w)
    return out


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_does_not_change_logits(tiny_models, family):
    model = tiny_models(family)
    inputs = _inputs(model, family)
    with torch.no_grad():
        plain = model(**inputs).logits
        with record_routing(model) as rec:
            hooked = model(**inputs).logits
        again = model(**inputs).logits
    assert torch.equal(plain, hooked)
    assert torch.equal(plain, again)  # hooks are gone afterwards
    assert len(rec.steps) == 1


@pytest.mark.parametrize("family", FAMILIES)
def test_ids_weights_equal_what_the_experts_receive(tiny_models, family):
    model = tiny_models(family)
    fam = get_family(family)
    inputs = _inputs(model, family)
    with torch.no_grad(), record_routing(model) as rec:
        model(**inputs)
    step = rec.steps[0]
    keep = inputs["attention_mask"].reshape(-1).bool()
    assert step.num_tokens == int(keep.sum())  # padding absent
    assert rec.facts.moe_layers == tuple(sorted(_decoder_layers_with_experts(model)))
    if fam.kind == "llama4":
        pytest.skip("Llama 4 experts receive pre-scaled rows, not ids: checked against "
                    "output_router_logits below")
    ref = _dispatched(model, family, inputs)
    for trace_layer, decoder_layer in enumerate(rec.facts.moe_layers):
        ids, w = ref[decoder_layer]
        np.testing.assert_array_equal(step.topk_ids[trace_layer], ids[keep].numpy())
        np.testing.assert_allclose(step.topk_weights[trace_layer], w[keep].numpy(), rtol=1e-6)


def _decoder_layers_with_experts(model):
    return {int(n.split(".layers.")[1].split(".")[0]) for n, m in model.named_modules()
            if type(m).__name__.endswith("Experts") and ".layers." in n}


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "internvl-moe"])
def test_scores_equal_output_router_logits(tiny_models, family):
    """InternVL returns no router_logits at all (hooks are the only way)."""
    model = tiny_models(family)
    fam = get_family(family)
    inputs = _inputs(model, family)
    with torch.no_grad():
        logits = model(**inputs, output_router_logits=True).router_logits
        with record_routing(model) as rec:
            model(**inputs)
    step = rec.steps[0]
    keep = inputs["attention_mask"].reshape(-1).bool()
    assert len(logits) == rec.facts.num_moe_layers
    for layer, raw in enumerate(logits):
        raw = raw.float()[keep]
        probs = raw.softmax(-1) if fam.score_function == "softmax" else raw.sigmoid()
        got = step.scores[layer].astype(np.float32)
        if fam.split_sets:  # ERNIE: each token is scored by its own set's router only
            num = probs.shape[1]
            vision = inputs["moe_mm_token_type_ids"].reshape(-1).bool()[keep].numpy()
            got = np.where(vision[:, None], got[:, num:], got[:, :num])
            assert (step.topk_ids[layer][vision] >= num).all()
            assert (step.topk_ids[layer][~vision] < num).all()
        np.testing.assert_allclose(got, probs.numpy(), atol=2e-3)
        if fam.kind == "llama4":
            top = torch.topk(raw, rec.facts.top_k, dim=1)
            np.testing.assert_array_equal(step.topk_ids[layer], top.indices.numpy())
            np.testing.assert_allclose(step.topk_weights[layer], top.values.sigmoid().numpy(),
                                       rtol=1e-6)


@pytest.mark.parametrize("family", ["qwen3-vl-moe", "ernie4.5-vl", "llama4", "aria",
                                    "internvl-moe", "glm4v-moe", "qwen3.5-moe"])
def test_modality_labels(tiny_models, family):
    model = tiny_models(family)
    inputs = _inputs(model, family)
    with torch.no_grad(), record_routing(model) as rec:
        model(**inputs)
    step = rec.steps[0]
    keep = inputs["attention_mask"].reshape(-1).bool()
    is_image = (inputs["input_ids"].reshape(-1) == IMAGE)[keep].numpy()
    np.testing.assert_array_equal(step.modality, np.where(is_image, 1, 0))
    lengths = inputs["attention_mask"].sum(1).tolist()
    np.testing.assert_array_equal(step.request_id, np.repeat(np.arange(len(lengths)), lengths))
    np.testing.assert_array_equal(step.position, np.concatenate([np.arange(n) for n in lengths]))


@pytest.mark.parametrize("family", FAMILIES)
def test_padded_batch_routes_like_requests_alone(tiny_models, family):
    model = tiny_models(family)
    requests = _requests(family)
    batch = _inputs(model, family, requests, seed=7)
    with torch.no_grad(), record_routing(model) as rec:
        model(**batch)
    together = rec.steps[0]
    for b in range(len(requests)):
        alone_inputs = _alone(batch, b, family, model)
        with torch.no_grad(), record_routing(model) as rec_alone:
            model(**alone_inputs)
        alone = rec_alone.steps[0]
        mine = together.request_id == b
        np.testing.assert_array_equal(together.topk_ids[:, mine], alone.topk_ids)
        np.testing.assert_allclose(together.topk_weights[:, mine], alone.topk_weights,
                                   rtol=1e-4, atol=1e-5)
        np.testing.assert_allclose(together.entropy[:, mine], alone.entropy, rtol=1e-4)
        np.testing.assert_array_equal(together.modality[mine], alone.modality)


def _alone(batch, b, family, model):
    """Row ``b`` of a left-padded batch, padding stripped, with its own pixels."""
    keep = batch["attention_mask"][b].bool()
    out = {k: batch[k][b:b + 1, keep] for k in batch
           if k in ("input_ids", "attention_mask", "mm_token_type_ids",
                    "moe_mm_token_type_ids")}
    fam = get_family(family)
    if not fam.vision:
        return out
    images_before = sum(int((batch["input_ids"][i] == IMAGE).any()) and
                        _num_images(batch, i, model) for i in range(b))
    mine = _num_images(batch, b, model)
    if not mine:
        return out
    if fam.vision == "qwen":
        grid = batch["image_grid_thw"]
        patches = grid.prod(dim=1)
        start = int(patches[:images_before].sum())
        stop = start + int(patches[images_before:images_before + mine].sum())
        out["pixel_values"] = batch["pixel_values"][start:stop]
        out["image_grid_thw"] = grid[images_before:images_before + mine]
    else:
        for key in ("pixel_values", "pixel_mask"):
            if key in batch:
                out[key] = batch[key][images_before:images_before + mine]
    return out


def _num_images(batch, b, model):
    ids = batch["input_ids"][b]
    per_image = {"qwen": 4, "llama4": 4, "aria": 4, "internvl": 4}
    fam_tokens = per_image[_vision_kind(model)]
    return int((ids == IMAGE).sum()) // fam_tokens


def _vision_kind(model):
    from macssim.capture._sites import detect_family

    return detect_family(model).vision


def test_llama4_repair_detects_exactly_the_broken_forward():
    """transformers 5.24's ``Llama4ForConditionalGeneration.forward`` copies
    ``image_outputs`` from its language model's output, which has no such field: every
    ``return_dict`` call raises (hooks or not). The repair (``_compat.py``) must be found
    needed exactly where an unrepaired model fails so, and not elsewhere."""
    import transformers

    from macssim.capture._compat import _llama4_lacks_image_outputs, repair_model
    from macssim.capture._tiny import tiny_config

    torch.manual_seed(0)
    bare = transformers.Llama4ForConditionalGeneration(tiny_config("llama4")).eval()
    inputs = _inputs(bare, "llama4")
    seen = []  # the language model's logits: computed before the failing line
    handle = bare.language_model.register_forward_hook(
        lambda module, args, output: seen.append(output.logits))
    try:
        with torch.no_grad():
            bare(**inputs)
        broken = False
    except AttributeError as e:
        assert "image_outputs" in str(e)
        broken = True
    finally:
        handle.remove()
    assert _llama4_lacks_image_outputs(bare) is broken
    with torch.no_grad():
        repaired = repair_model(bare)(**inputs)
    assert torch.equal(repaired.logits, seen[0])  # the repair computes nothing


def test_llama4_output_carries_its_image_encoder_output(tiny_models):
    """After the repair, the output's image field holds the vision model's output of the
    same call (what 5.23's ``image_hidden_states`` held), and None for a text-only call."""
    from dataclasses import fields

    model = tiny_models("llama4")
    inputs = _inputs(model, "llama4")
    with torch.no_grad():
        out = model(**inputs)
        vision = model.vision_model(inputs["pixel_values"]).last_hidden_state
        text_only = model(input_ids=torch.tensor([[20, 21, 22]]))
    if "image_outputs" in {f.name for f in fields(type(out))}:  # transformers >= 5.24
        assert torch.equal(out.image_outputs.last_hidden_state, vision)
        assert text_only.image_outputs is None
    else:
        assert torch.equal(out.image_hidden_states, vision)
        assert text_only.image_hidden_states is None


@pytest.mark.parametrize("family", ["llama4", "qwen3-vl-moe", "mixtral"])
def test_repair_is_idempotent_and_adds_nothing_elsewhere(tiny_models, family):
    from macssim.capture._compat import repair_model

    model = tiny_models(family)

    def count():
        return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())

    before = count()
    repair_model(model)
    assert count() == before
