"""patchknn's length channels (`length_weight`): the features by hand against the package model's
blocks, Euclidean distance against the bank, zero-shot on the directions alone, older models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from older_models import forget_settings

from anomalens.backbones.cnn import EfficientNetPatchBackbone
from anomalens.detector import Detector, load_detector
from anomalens.export.graph import synthetic_image
from anomalens.images import LoadedImage
from anomalens.methods.patch_distances import distance_metric, length_channels, length_weight
from anomalens.methods.patchknn import PatchKnnSettings, score_image


def images(size: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, size, size, generator=g) * 2 - 1


@pytest.mark.parametrize("log,length_blocks", [(False, None), (True, None), (True, (4, 10, 14))])
def test_length_features_are_the_unit_features_and_the_weighted_layer_normalised_lengths(
    log, length_blocks, lite0_block_outputs
):
    x = images(64)
    read = length_blocks or (4, 10)
    captured = lite0_block_outputs(read, x)
    lengths = []
    for b in read:
        f = captured[b]
        mean = f.mean(dim=(1, 2, 3), keepdim=True)
        std = f.var(dim=(1, 2, 3), unbiased=False, keepdim=True).add(1e-5).sqrt()
        # the default's neighbourhood average: padding not counted
        f = F.avg_pool2d((f - mean) / std / f.shape[1] ** 0.5, 3, stride=1, padding=1, count_include_pad=False)
        length = F.interpolate(f, size=(8, 8), mode="bilinear", align_corners=False).norm(dim=1)
        lengths.append(torch.log(length) if log else length)
    expected_lengths = 16.0**0.5 * torch.stack(lengths, dim=-1)
    net = EfficientNetPatchBackbone(image_size=64, length_weight=16.0, length_log=log, length_blocks=length_blocks)
    got = net(x)
    plain = EfficientNetPatchBackbone(image_size=64)(x)
    n = len(read)
    assert got.shape[-1] == plain.shape[-1] + n == plain.shape[-1] + net.length_channels
    torch.testing.assert_close(got[..., :-n], plain, atol=1e-6, rtol=0)  # the directions are the default's
    torch.testing.assert_close(got[..., -n:], expected_lengths, atol=1e-4, rtol=1e-4)
    assert got[..., -n:].std() > 0.01 * got[..., -n:].abs().mean()  # lengths differ between patches


def test_lengths_are_compared_by_euclidean_distance_only_against_a_bank():
    s = PatchKnnSettings(length_weight=16)
    assert length_channels(s) == 2  # one per block read (4 and 10)
    assert (distance_metric(s), distance_metric(s, few_shot=False)) == ("euclidean", "cosine")
    assert length_channels(PatchKnnSettings(blocks=(4, 10, 14), length_weight=4)) == 3
    assert length_channels(PatchKnnSettings(length_blocks=(4, 10, 14), length_weight=4)) == 3
    default = PatchKnnSettings()  # EfficientNet: log lengths weighed 4, few-shot only
    assert default.length_weight is None and default.length_log and length_weight(default) == 4.0
    assert length_channels(default) == 2 and distance_metric(default, few_shot=False) == "cosine"
    assert length_channels(PatchKnnSettings(backbone="ViT-B-16")) == 0  # CLIP tokens: off
    assert length_channels(PatchKnnSettings(magnitudes=True)) == 0
    assert distance_metric(PatchKnnSettings(length_weight=0)) == "cosine"
    with pytest.raises(ValueError, match="EfficientNet"):
        Detector("patchknn", backbone="test-tiny", length_weight=4.0)
    with pytest.raises(ValueError, match="magnitudes"):
        Detector("patchknn", magnitudes=True, length_weight=4.0)


def test_few_shot_distance_is_the_euclidean_of_directions_and_lengths_by_hand():
    # two blocks: a 4-d unit direction, then 2 weighted lengths; the nearest bank patch by hand
    g = torch.Generator().manual_seed(0)
    unit = F.normalize(torch.randn(10, 4, generator=g), dim=-1)
    lengths = torch.rand(10, 2, generator=g)
    bank = torch.cat([unit, lengths], dim=1)
    query = bank[:4].clone()
    query[1, 4:] += torch.tensor([0.6, 0.8])  # right direction, lengths off by (0.6, 0.8): distance <= 1
    s = PatchKnnSettings(image_size=32, smoothing_sigma=0.0, edge_weighting=False, length_weight=16, gaussian_weight=0)
    _, score = score_image(query.view(1, 2, 2, 6), bank, s)
    expected = torch.cdist(query, bank).min(dim=1).values
    assert float(expected[1]) > 0.1 and float(expected[[0, 2, 3]].max()) < 1e-6
    assert float(score) == pytest.approx(float(expected.max()), abs=1e-5)
    # zero-shot drops the lengths: the same image with other lengths gives the same map
    other = query.clone()
    other[:, 4:] = torch.rand(4, 2, generator=g)
    zero_a, _ = score_image(query.view(1, 2, 2, 6), None, s)
    zero_b, _ = score_image(other.view(1, 2, 2, 6), None, s)
    torch.testing.assert_close(zero_a, zero_b)


def texture(seed: int, contrast: float = 1.0) -> LoadedImage:
    rgb = synthetic_image(64, 64, seed=0).astype(np.float32)
    g = np.random.default_rng(seed)
    rgb = rgb + g.normal(0, 3, rgb.shape)  # normal images differ a little
    rgb[20:36, 20:36] = 128 + contrast * (rgb[20:36, 20:36] - 128)
    return LoadedImage(path=f"t{seed}-{contrast}.png", rgb=np.clip(rgb, 0, 255).astype(np.uint8))


def test_zero_shot_scores_are_the_cosine_ones_and_few_shot_finds_a_contrast_change():
    refs, queries = [texture(1), texture(2)], [texture(3), texture(4, contrast=2.5)]
    with_lengths = Detector("patchknn", image_size=64, length_weight=16)
    without = Detector("patchknn", image_size=64, length_weight=0)
    for a, b in zip(with_lengths.predict(queries), without.predict(queries)):  # zero-shot
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
    normal, strong = with_lengths.fit(refs).predict(queries)
    assert strong.score > normal.score  # a patch of the same texture at 2.5 times the contrast
    assert (
        with_lengths.method.bank_.banks["patches"].shape[1]
        == without.fit(refs).method.bank_.banks["patches"].shape[1] + 2
    )


def test_saved_models_keep_their_lengths_and_older_models_load_without(tmp_path):
    refs, query = [texture(1), texture(2)], [texture(3)]
    fitted = Detector("patchknn", image_size=64, length_weight=16, length_log=True).fit(refs)
    fitted.save(tmp_path / "lengths")
    again = load_detector(tmp_path / "lengths")
    assert (again.method.settings.length_weight, again.method.settings.length_log) == (16.0, True)
    assert again.predict(query)[0].score == pytest.approx(fitted.predict(query)[0].score, abs=1e-6)
    Detector("patchknn", image_size=64, length_weight=0, length_log=False).fit(refs).save(tmp_path / "m")
    forget_settings(tmp_path / "m", "length_weight", "length_log")  # as an older model wrote it
    loaded = load_detector(tmp_path / "m")
    assert (loaded.method.settings.length_weight, loaded.method.settings.length_log) == (0.0, False)
    assert loaded.predict(query)[0].score == pytest.approx(
        Detector("patchknn", image_size=64, length_weight=0).fit(refs).predict(query)[0].score, abs=1e-6
    )
