"""Shared fixtures for the capture tests: tiny models of the real transformers classes,
built once per session (each builds in well under a second)."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")

from macssim.capture import build_tiny_model  # noqa: E402


@pytest.fixture(scope="session")
def tiny_models():
    """family name -> tiny model (eval mode, eager experts, seed 0), built on first use."""
    cache: dict[str, object] = {}

    def get(name: str):
        if name not in cache:
            cache[name] = build_tiny_model(name, seed=0)
        return cache[name]

    return get


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine
    OpenMP's spinning threads make a 5 ms forward take seconds; restored afterwards."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
