"""The bank's Gaussian (`gaussian_weight`): Mahalanobis distances against scipy, how patchknn adds them
to its kNN map, the cache per bank, leave-one-out, the ONNX graph and older models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.spatial.distance import mahalanobis

from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.patch_distances import CoarseLayout, gaussian_weight, patch_anomalies, patch_scores
from anomalens.methods.patch_gaussian import PatchGaussian, bank_gaussian
from anomalens.methods.patchknn import PatchKnnSettings


def correlated(n: int, c: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, generator=g) @ torch.randn(c, c, generator=g) + 3.0


@pytest.mark.parametrize("shrinkage", [0.0, 0.1, 1.0])
def test_distances_are_scipys_mahalanobis_under_the_shrunk_covariance(shrinkage):
    bank = correlated(400, 6)
    query = correlated(5, 6, seed=1)
    x = bank.double().numpy()
    cov = np.cov(x.T)  # unbiased, as the fit
    cov += shrinkage * np.trace(cov) / 6 * np.eye(6)
    expected = [mahalanobis(q, x.mean(0), np.linalg.inv(cov)) / 6**0.5 for q in query.double().numpy()]
    got = PatchGaussian.fit(bank, shrinkage).distance(query)
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-4)


def test_what_a_patch_adds_is_its_distance_beyond_the_median_of_the_banks_own():
    bank = correlated(301, 4)
    gaussian = PatchGaussian.fit(bank, 0.1)
    own = gaussian.distance(bank)
    assert gaussian.baseline == pytest.approx(float(own.median()), rel=1e-5)
    torch.testing.assert_close(gaussian.excess(bank), (own - own.median()).clamp_min(0), atol=1e-5, rtol=0)
    assert int((gaussian.excess(bank) == 0).sum()) >= 150  # half the bank's own patches add nothing


def test_a_patch_off_the_banks_narrow_direction_scores_higher_than_one_as_far_along_its_wide_one():
    g = torch.Generator().manual_seed(2)
    bank = torch.randn(2000, 2, generator=g) * torch.tensor([1.0, 0.05])  # wide in x, narrow in y
    gaussian = PatchGaussian.fit(bank, 0.0)
    along, across = gaussian.distance(torch.tensor([[0.5, 0.0], [0.0, 0.5]]))
    assert across > 5 * along  # Euclidean distances to the mean are equal
    # identical patches (no variance at all) still give a finite Gaussian
    assert torch.isfinite(PatchGaussian.fit(torch.ones(10, 3), 0.1).distance(torch.zeros(1, 3))).all()


def test_patchknn_adds_the_weighted_distance_of_the_stride8_channels_to_its_knn_map():
    g = torch.Generator().manual_seed(3)
    main, main_bank = torch.randn(1, 6, 6, 4, generator=g), torch.randn(50, 4, generator=g)
    s = PatchKnnSettings(length_weight=4.0, gaussian_weight=0.7)  # lengths on: Euclidean
    got = patch_anomalies(main, main_bank, s)
    knn = torch.cdist(main.reshape(36, 4), main_bank).min(dim=1).values.view(1, 6, 6)
    mahal = PatchGaussian.fit(main_bank, s.gaussian_shrinkage).excess(main)
    torch.testing.assert_close(got, knn + 0.7 * mahal, atol=1e-5, rtol=1e-5)
    # the coarse map's trailing channels are not part of the Gaussian
    coarse_feats, coarse_bank = torch.randn(1, 6, 6, 3, generator=g), torch.randn(50, 3, generator=g)
    both = patch_anomalies(
        torch.cat([main, coarse_feats], -1),
        torch.cat([main_bank, coarse_bank], -1),
        PatchKnnSettings(length_weight=4.0, gaussian_weight=0.7, coarse_weight=1e-9),
        CoarseLayout(3, (6, 6)),
    )
    torch.testing.assert_close(both, got, atol=1e-4, rtol=1e-4)
    # cosine (no lengths): unit queries against the unit bank
    cosine = PatchKnnSettings(length_weight=0.0, gaussian_weight=1.0)
    unit_bank = F.normalize(main_bank, dim=-1)
    plain = patch_anomalies(main, unit_bank, PatchKnnSettings(length_weight=0.0, gaussian_weight=0.0))
    expected = plain + PatchGaussian.fit(unit_bank, cosine.gaussian_shrinkage).excess(F.normalize(main, dim=-1))
    torch.testing.assert_close(patch_anomalies(main, unit_bank, cosine), expected, atol=1e-5, rtol=1e-5)
    # zero-shot has no bank and no Gaussian
    torch.testing.assert_close(
        patch_anomalies(main, None, s), patch_anomalies(main, None, PatchKnnSettings(length_weight=4.0))
    )


def test_defaults_by_backbone():
    assert gaussian_weight(PatchKnnSettings()) == 0.5
    assert gaussian_weight(PatchKnnSettings(magnitudes=True)) == 0.0
    assert gaussian_weight(PatchKnnSettings(backbone="ViT-B-16-plus-240")) == 0.0
    assert gaussian_weight(PatchKnnSettings(gaussian_weight=2.0)) == 2.0
    assert PatchKnnSettings().gaussian_shrinkage == 2.0  # README "The references as one Gaussian"
    # models saved before the setting existed scored without it
    assert PatchKnnSettings.absent_in_older_models["gaussian_weight"] == 0.0


def test_the_gaussian_is_fitted_once_per_bank_and_again_when_the_bank_changes():
    bank = correlated(100, 5)
    first = bank_gaussian(bank)
    assert bank_gaussian(bank) is first
    assert bank_gaussian(bank, channels=3) is not first and bank_gaussian(bank, channels=3).mean.shape == (3,)
    assert bank_gaussian(bank[:50]) is not first  # another tensor: its own Gaussian
    bank.mul_(2.0)
    refitted = bank_gaussian(bank)
    assert refitted is not first
    torch.testing.assert_close(refitted.mean, 2 * first.mean)


def test_leave_one_out_scores_a_reference_under_the_gaussian_of_the_other_references_patches():
    g = torch.Generator().manual_seed(4)
    refs = [
        LoadedImage(f"ref{i}.png", (torch.rand(48, 48, 3, generator=g) * 255).to(torch.uint8).numpy()) for i in range(3)
    ]
    # the whole bank (its origins are simple), the recipe alone
    method = create_method("patchknn", image_size=48, coreset_ratio=1.0, fused_recipe="none")
    out = method.leave_one_out(refs, [1])[0]
    bank = method.bank_.banks["patches"]
    _, origin = method.bank_with_origin([method.reference_patches(r) for r in refs])
    others = bank[origin != 1]
    feats, _ = method.image_features(refs[1])
    s = method.settings
    knn = patch_scores(feats, others, s.few_shot_k, s.zero_shot_k, metric="euclidean")
    expected = knn + gaussian_weight(s) * PatchGaussian.fit(others, s.gaussian_shrinkage).excess(feats)
    got = method.score(feats, method.image_features(refs[1])[1], others, patches=None)
    torch.testing.assert_close(torch.from_numpy(got.anomaly_map), torch.from_numpy(out.anomaly_map))
    torch.testing.assert_close(patch_anomalies(feats, others, s), expected, atol=1e-5, rtol=1e-5)
    # not the whole bank's Gaussian: reference 1's own patches do not shape the Gaussian it is scored under
    whole = knn + gaussian_weight(s) * PatchGaussian.fit(bank, s.gaussian_shrinkage).excess(feats)
    assert (whole - expected).abs().max() > 1e-4
