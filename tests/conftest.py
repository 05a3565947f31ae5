"""Shared fixtures: offline, seeded, tiny models."""

from __future__ import annotations

import os

# Nothing in the test suite may reach the network (Hugging Face hub included).
os.environ["HF_HUB_OFFLINE"] = "1"

import pytest
import torch


@pytest.fixture(scope="session")
def tiny_clip():
    """A randomly initialised `test-tiny` CLIP backbone (32 px native, 8 px patches, 4 blocks)."""
    from anomalens.backbones.clip import create_clip

    torch.manual_seed(0)
    return create_clip("test-tiny", pretrained=None)


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread for modules of tiny models: on a busy 2-core machine OpenMP spin-waits
    make them up to 100x slower. Modules opt in with `pytestmark = usefixtures("one_torch_thread")`."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
