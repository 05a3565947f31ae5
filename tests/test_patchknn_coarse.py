"""patchknn's coarse map (`coarse_weight`, `coarse_blocks`): the cell bookkeeping by hand, the
coarse channels against the package model's block 14, the coarse distances against a direct
computation, zero-shot without them, saved and older models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from older_models import forget_settings

from anomalens.backbones.cnn import EfficientNetPatchBackbone, coarse_cells, nearest_cells
from anomalens.detector import Detector, load_detector
from anomalens.export.graph import synthetic_image
from anomalens.images import LoadedImage
from anomalens.methods.patch_distances import CoarseLayout, coarse_blocks, coarse_scores, patch_anomalies
from anomalens.methods.patchknn import PatchKnnSettings


def test_cells_by_hand():
    # 30 stride-8 cells over 8 coarse cells (a 240 px input): cell i lies in coarse cell floor(i * 8 / 30)
    assert nearest_cells(30, 8)[:9] == [0, 0, 0, 0, 1, 1, 1, 1, 2]
    assert coarse_cells(30, 8) == [0, 4, 8, 12, 15, 19, 23, 27]
    for fine, coarse in ((32, 8), (30, 8), (13, 4), (5, 5)):
        lying_in = nearest_cells(fine, coarse)
        assert [lying_in[i] for i in coarse_cells(fine, coarse)] == list(range(coarse))  # read back exactly
        assert F.interpolate(torch.arange(coarse).float()[None, None], size=fine, mode="nearest")[0, 0].tolist() == [
            float(c) for c in lying_in
        ]


@pytest.mark.parametrize("size", [64, 100, 240, 256])
def test_the_coarse_grid_is_the_block_output_grid(size):
    net = EfficientNetPatchBackbone(image_size=size, coarse_blocks=(14,), length_weight=4.0, length_log=True)
    x = torch.zeros(1, 3, size, size)
    outputs = net.run_blocks_in_torch(x)
    assert net.coarse_grid(size) == tuple(outputs[14].shape[-2:])
    assert net(x).shape[1] == outputs[4].shape[-1]  # the features stay on block 4's grid
    assert net.coarse_channels == 192 + 1  # block 14's channels and its length


def test_coarse_channels_are_the_coarse_blocks_own_features_on_each_cell(lite0_block_outputs):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 96, 96, generator=g) * 2 - 1
    net = EfficientNetPatchBackbone(image_size=96, coarse_blocks=(14,), length_weight=4.0, length_log=True)
    feats = net(x)
    plain = EfficientNetPatchBackbone(image_size=96, length_weight=4.0, length_log=True)(x)
    torch.testing.assert_close(feats[..., : plain.shape[-1]], plain)  # the stride-8 channels are unchanged
    raw = lite0_block_outputs((14,), x)[14]  # (2, 192, 3, 3)
    local = F.avg_pool2d(raw, 3, stride=1, padding=1, count_include_pad=False)
    unit = F.normalize(local, dim=1)
    mean = raw.mean(dim=(1, 2, 3), keepdim=True)
    std = raw.var(dim=(1, 2, 3), unbiased=False, keepdim=True).add(1e-5).sqrt()
    length = ((local - mean) / std).norm(dim=1, keepdim=True) / 192**0.5
    expected = torch.cat([unit, 2.0 * torch.log(length.clamp_min(1e-3))], 1).permute(0, 2, 3, 1)
    coarse = feats[..., plain.shape[-1] :]
    rows = nearest_cells(12, 3)
    for i in range(12):
        for j in range(12):
            torch.testing.assert_close(coarse[:, i, j], expected[:, rows[i], rows[j]], atol=1e-4, rtol=1e-4)


def test_coarse_distances_by_direct_computation():
    g = torch.Generator().manual_seed(1)
    cells = torch.randn(1, 2, 2, 5, generator=g)
    feats = cells.repeat_interleave(3, dim=1).repeat_interleave(3, dim=2)  # a 6 x 6 grid of 2 x 2 cells
    bank = torch.randn(7, 5, generator=g)
    got = coarse_scores(feats, bank, (2, 2), k=1, metric="euclidean")
    nearest = torch.cdist(cells.reshape(4, 5), bank).min(dim=1).values.view(1, 1, 2, 2)
    expected = F.interpolate(nearest, size=(6, 6), mode="bilinear", align_corners=False)[:, 0]
    torch.testing.assert_close(got, expected)
    # the few-shot map is the stride-8 map plus coarse_weight x the coarse one
    main, main_bank = torch.randn(1, 6, 6, 4, generator=g), torch.randn(7, 4, generator=g)
    s = PatchKnnSettings(length_weight=4.0, coarse_weight=0.5, gaussian_weight=0)  # test_patch_gaussian adds it
    layout = CoarseLayout(5, (2, 2))
    both = patch_anomalies(torch.cat([main, feats], -1), torch.cat([main_bank, bank], -1), s, layout)
    fine = torch.cdist(main.reshape(36, 4), main_bank).min(dim=1).values.view(1, 6, 6)
    torch.testing.assert_close(both, fine + 0.5 * expected, atol=1e-5, rtol=1e-5)
    # zero-shot compares the stride-8 directions alone: the coarse channels change nothing
    alone = patch_anomalies(main, None, PatchKnnSettings(length_weight=4.0, coarse_weight=0.0))
    torch.testing.assert_close(patch_anomalies(torch.cat([main, feats], -1), None, s, layout), alone)


def test_which_blocks():
    assert coarse_blocks(PatchKnnSettings()) == ()  # off by default
    assert coarse_blocks(PatchKnnSettings(coarse_weight=0.5)) == (14,)
    assert coarse_blocks(PatchKnnSettings(backbone="efficientnet-lite2", coarse_weight=1)) == (19,)
    assert coarse_blocks(PatchKnnSettings(coarse_blocks=(13,), coarse_weight=1)) == (13,)
    assert coarse_blocks(PatchKnnSettings(backbone="ViT-B-16", coarse_weight=1)) == ()  # CLIP tokens: none


def texture(seed: int) -> LoadedImage:
    rgb = synthetic_image(64, 64, seed=0).astype(np.float32) + np.random.default_rng(seed).normal(0, 3, (64, 64, 3))
    return LoadedImage(path=f"t{seed}.png", rgb=np.clip(rgb, 0, 255).astype(np.uint8))


def test_saved_models_keep_the_coarse_map_and_older_models_load_without(tmp_path):
    refs, query = [texture(1), texture(2)], [texture(3)]
    fitted = Detector("patchknn", image_size=64, coarse_weight=0.5).fit(refs)
    fitted.save(tmp_path / "coarse")
    again = load_detector(tmp_path / "coarse")
    assert again.method.settings.coarse_weight == 0.5 and again.method.coarse_layout is not None
    assert again.predict(query)[0].score == pytest.approx(fitted.predict(query)[0].score, abs=1e-6)
    without = Detector("patchknn", image_size=64).fit(refs)
    assert without.predict(query)[0].score != pytest.approx(fitted.predict(query)[0].score, abs=1e-6)
    without.save(tmp_path / "m")
    forget_settings(tmp_path / "m", "coarse_weight", "coarse_blocks")  # as an older model wrote it
    loaded = load_detector(tmp_path / "m")
    assert loaded.method.settings.coarse_weight == 0.0 and loaded.method.coarse_layout is None  # the default
    assert loaded.predict(query)[0].score == pytest.approx(without.predict(query)[0].score, abs=1e-6)
