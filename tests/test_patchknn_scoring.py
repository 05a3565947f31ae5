"""patchknn's scoring pieces against hand computation: smoothing, top-fraction score, reweighting, coreset."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomalens.coreset import greedy_coreset
from anomalens.methods.patchknn import PatchKnnSettings, score_image
from anomalens.scoring import edge_weights, gaussian_kernel, gaussian_smooth, image_score, reweighting_factor

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_gaussian_kernel_matches_formula():
    k = gaussian_kernel(1.0)
    assert k.numel() == 2 * int(4.0 + 0.5) + 1  # PatchCore's kernel size for sigma 1: 9
    raw = torch.tensor([math.exp(-0.5 * x * x) for x in range(-4, 5)])
    torch.testing.assert_close(k, raw / raw.sum())


def test_smoothing_spreads_a_single_spike_as_the_outer_product_kernel():
    sigma = 1.0
    maps = torch.zeros(1, 21, 21)
    maps[0, 10, 10] = 1.0
    out = gaussian_smooth(maps, sigma)
    k = gaussian_kernel(sigma)
    expected = torch.zeros(21, 21)
    expected[6:15, 6:15] = k[:, None] * k[None, :]  # away from the borders: the 2-D kernel itself
    torch.testing.assert_close(out[0], expected, atol=1e-7, rtol=0)
    assert float(out.max()) == pytest.approx(float(k[4] ** 2))  # the peak drops to k(0)^2


def test_smoothing_keeps_constants_and_sigma_zero_is_identity():
    const = torch.full((2, 8, 9), 0.3)
    torch.testing.assert_close(gaussian_smooth(const, 4.0), const)  # reflect padding, tiny maps too
    x = torch.rand(1, 5, 5)
    assert torch.equal(gaussian_smooth(x, 0.0), x)


def test_image_score_max_and_top_fraction_mean():
    values = torch.arange(1.0, 11.0).view(2, 5)  # 1..10
    assert float(image_score(values)) == 10.0
    assert float(image_score(values, top_fraction=0.2)) == pytest.approx((10 + 9) / 2)
    assert float(image_score(values, top_fraction=0.25)) == pytest.approx((10 + 9 + 8) / 3)  # ceil(2.5) = 3
    assert float(image_score(values, top_fraction=0.001)) == 10.0  # at least one value


def test_score_image_is_max_of_smoothed_upsampled_patch_map():
    torch.manual_seed(0)
    feats = F.normalize(torch.randn(1, 4, 4, 8), dim=-1)
    bank = F.normalize(torch.randn(30, 8), dim=-1)
    s = PatchKnnSettings(
        image_size=32, smoothing_sigma=1.0, top_fraction=0.0, edge_weighting=False, length_weight=0, gaussian_weight=0
    )
    maps, score = score_image(feats, bank, s)
    # by hand: 0.5 (1 - max cosine), bilinear to 32 x 32 (the smallest input allowed),
    # separable Gaussian with reflect padding
    patches = (0.5 * (1 - (feats.reshape(-1, 8) @ bank.T).max(dim=1).values)).view(1, 1, 4, 4)
    up = F.interpolate(patches, size=(32, 32), mode="bilinear", align_corners=False)
    k = gaussian_kernel(1.0)
    r = k.numel() // 2
    x = F.conv2d(F.pad(up, (0, 0, r, r), mode="reflect"), k.view(1, 1, -1, 1))
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="reflect"), k.view(1, 1, 1, -1))
    torch.testing.assert_close(maps, x[:, 0], atol=1e-6, rtol=0)
    assert float(score) == pytest.approx(float(x.max()), abs=1e-6)
    # with a top fraction the score is the mean of the top ceil(0.1 * 32 * 32) = 103 values of that map
    s = PatchKnnSettings(
        image_size=32, smoothing_sigma=1.0, top_fraction=0.1, edge_weighting=False, length_weight=0, gaussian_weight=0
    )
    _, top = score_image(feats, bank, s)
    assert float(top) == pytest.approx(float(x.flatten().topk(103).values.mean()), abs=1e-6)
    # edge weighting: the same maps; the score is the max of the map times the upsampled cell weights
    cosine = PatchKnnSettings(
        image_size=32, smoothing_sigma=1.0, length_weight=0, gaussian_weight=0
    )  # hand-made unit features
    weighted_maps, weighted = score_image(feats, bank, cosine)
    torch.testing.assert_close(weighted_maps, maps)
    cells = torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]) / 9.0  # 3 x 3 windows on the grid
    w = F.interpolate(cells[None, None], size=(32, 32), mode="bilinear", align_corners=False)[0, 0]
    assert float(weighted) == pytest.approx(float((x[0, 0] * w).max()), abs=1e-6)


def test_edge_weights_are_the_share_of_each_window_on_the_grid():
    # read at the grid's own size (no upsampling), each cell weighs its window's share on the grid
    three = edge_weights((4, 4), 3, 4)
    torch.testing.assert_close(three, torch.tensor([[4, 6, 6, 4], [6, 9, 9, 6], [6, 9, 9, 6], [4, 6, 6, 4]]) / 9.0)
    five = edge_weights((4, 4), 5, 4)  # 5 x 5 windows on a 4 x 4 grid: corner 3 x 3, next 3 x 4, inner 4 x 4 cells
    assert float(five[0, 0]) == pytest.approx(9 / 25)
    assert float(five[0, 1]) == pytest.approx(12 / 25)
    assert float(five[1, 1]) == pytest.approx(16 / 25)
    assert torch.equal(edge_weights((4, 4), 1, 4), torch.ones(4, 4))  # no pooling, no weighting


def test_edge_weighting_lowers_an_edge_spike_not_an_interior_one():
    # one anomalous patch (distance 1 to the bank) at a corner vs in the interior of an 8 x 8 grid
    bank = torch.tensor([[1.0, 0.0]])
    corner, centre = torch.zeros(1, 8, 8, 2), torch.zeros(1, 8, 8, 2)
    corner[..., 0] = centre[..., 0] = 1.0
    corner[0, 0, 0] = torch.tensor([-1.0, 0.0])
    centre[0, 4, 4] = torch.tensor([-1.0, 0.0])
    off = PatchKnnSettings(image_size=64, smoothing_sigma=0.0, edge_weighting=False, length_weight=0, gaussian_weight=0)
    on = PatchKnnSettings(image_size=64, smoothing_sigma=0.0, length_weight=0, gaussian_weight=0)
    assert float(score_image(corner, bank, off)[1]) == pytest.approx(1.0)
    assert float(score_image(corner, bank, on)[1]) < 0.6  # about 4/9 at the corner cell
    assert float(score_image(centre, bank, on)[1]) == pytest.approx(float(score_image(centre, bank, off)[1]))


def test_reweighting_factor_by_hand():
    # Bank: m* = e0 nearest to the query, two more patches; b = 3 neighbours of m* (itself first).
    bank = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    query = F.normalize(torch.tensor([[0.9, 0.3, 0.1], [1.0, 0.0, 0.0]]), dim=-1)
    patch_scores = torch.tensor([0.2, 0.0])  # the first query patch is the most anomalous
    q = query[0]
    d = torch.stack([(bank[i] - q).norm() for i in range(3)])  # m* = e0 first
    expected = 1 - torch.exp(d[0]) / torch.exp(d).sum()
    got = reweighting_factor(query, bank, patch_scores, neighbours=3)
    assert float(got) == pytest.approx(float(expected), abs=1e-6)
    # a bank where m* has near-duplicates (dense region) weighs the score less than a sparse one
    dense = torch.cat([bank[:1], F.normalize(bank[:1] + 0.01 * torch.randn(5, 3), dim=-1), bank[1:]])
    assert float(reweighting_factor(query, dense, patch_scores, 3)) < float(got)


def test_coreset_keeps_the_farthest_points_and_radius_decreases():
    torch.manual_seed(0)
    cluster = 0.01 * torch.randn(200, 4)
    outliers = torch.tensor([[5.0, 0, 0, 0], [0, -5.0, 0, 0], [0, 0, 6.0, 0]])
    points = torch.cat([cluster, outliers])
    indices, radii = greedy_coreset(points, 5, projection_dim=0)
    assert set(range(200, 203)) <= set(indices.tolist())  # every outlier is kept
    assert len(set(indices.tolist())) == 5
    assert torch.all(radii[1:] <= radii[:-1] + 1e-7)  # the k-centre radius never grows
    # the last radius is the largest distance of any point to its nearest chosen point
    nearest = torch.cdist(points, points[indices]).min(dim=1).values
    assert float(radii[-1]) == pytest.approx(float(nearest.max()), abs=1e-5)
    assert float(radii[-1]) < 0.1  # with the 3 outliers chosen, only the small cluster is left


def _textbook_coreset(points: torch.Tensor, size: int, first: int) -> torch.Tensor:
    """Greedy k-centre as algorithm 1 of PatchCore writes it: every distance updated after every pick."""
    nearest = torch.full((points.shape[0],), float("inf"))
    chosen, picks = first, []
    for _ in range(size):
        picks.append(chosen)
        nearest = torch.minimum(nearest, (points - points[chosen]).norm(dim=1))
        chosen = int(nearest.argmax())
    return torch.tensor(picks)


def test_lazy_block_coreset_picks_what_the_textbook_loop_picks():
    # 2,600 points (three blocks of the lazy update, the last one partial) in clusters of varied size
    generator = torch.Generator().manual_seed(3)
    centres = 2.0 * torch.randn(40, 8, generator=generator)
    members = torch.randint(40, (2600,), generator=generator)
    points = centres[members] + 0.3 * torch.rand(40, generator=generator)[members, None] * torch.randn(
        2600, 8, generator=generator
    )
    indices, radii = greedy_coreset(points, 120, projection_dim=0)
    expected = _textbook_coreset(points, 120, first=int(indices[0]))
    assert torch.equal(indices, expected)
    nearest = torch.cdist(points, points[indices]).min(dim=1).values
    assert float(radii[-1]) == pytest.approx(float(nearest.max()), rel=1e-4)
    assert torch.all(radii[1:] <= radii[:-1] + 1e-6)


def test_coreset_with_projection_still_keeps_outliers():
    torch.manual_seed(1)
    points = torch.cat([0.01 * torch.randn(300, 64), 3.0 * torch.eye(64)[:4]])
    indices, _ = greedy_coreset(points, 6, projection_dim=16)
    assert set(range(300, 304)) <= set(indices.tolist())


def test_reweighting_factor_euclidean_by_hand():
    # the bank's raw vectors: q's nearest is m* = (2, 0); its 2 nearest bank patches are m* and (3, 0)
    bank = torch.tensor([[2.0, 0.0], [3.0, 0.0], [10.0, 0.0]])
    query = torch.tensor([[0.0, 0.0], [2.0, 1.0]])
    factor = reweighting_factor(query, bank, torch.tensor([0.0, 1.0]), neighbours=2, metric="euclidean")
    d_star, d_other = 1.0, math.hypot(1.0, 1.0)
    expected = 1 - math.exp(d_star) / (math.exp(d_star) + math.exp(d_other))
    assert float(factor) == pytest.approx(expected, abs=1e-6)


def test_patch_scores_with_magnitudes_see_a_brighter_copy_of_a_normal_patch():
    from anomalens.methods.patch_distances import patch_scores

    g = torch.Generator().manual_seed(0)
    bank = torch.randn(64, 8, generator=g)
    feats = bank[:16].clone().view(1, 4, 4, 8)
    feats[0, 1, 2] *= 3.0  # same direction, three times the length
    cosine = patch_scores(feats, bank, 1, 2)
    euclid = patch_scores(feats, bank, 1, 2, metric="euclidean")
    assert float(cosine.max()) < 1e-6  # every patch has an exact direction match
    assert euclid[0].argmax() == 1 * 4 + 2 and float(euclid[0, 1, 2]) == pytest.approx(
        2 * float(bank[6].norm()), rel=1e-4
    )
    # zero-shot with an exclusion window: the Euclidean k-th neighbour outside it, as cdist gives
    flat = feats.reshape(-1, 8)
    got = patch_scores(feats, None, 1, 2, zero_shot_exclusion=1, metric="euclidean").reshape(-1)
    from anomalens.methods.patch_distances import window_mask

    expected = torch.cdist(flat, flat).masked_fill(window_mask(1, 4, 4, 1), float("inf")).min(dim=1).values
    torch.testing.assert_close(got, expected)


@pytest.mark.parametrize(
    "ratio, floor, size, patches, kept, augment",
    [
        (0.1, 1024, 8192, 1024, 0, "none"),  # one reference at 256 px keeps its whole bank
        (0.1, 1024, 8192, 4096, 1024, "none"),  # 4 references: the floor, a quarter
        (0.1, 1024, 8192, 16384, 1639, "none"),  # 16 references: ceil(1638.4)
        (0.1, 1024, 8192, 204800, 8192, "none"),  # 200 references: coreset_size caps
        (1.0, 1024, 8192, 4096, 0, "none"),  # ratio 1: the whole bank (what models saved before it load with)
        (0.1, 1, 0, 4096, 410, "none"),  # ceil(409.6), no floor, no cap
        (0.25, 1, 500, 4096, 500, "none"),
        (0.5, 1, 0, 1, 0, "none"),  # ceil(0.5) = 1: everything kept, no coreset computed
        (0.001, 1, 0, 10, 1, "none"),
        # the defaults (flips): one reference's 1,024 patches x 4 copies keep one reference's worth
        (0.1, 1024, 8192, 4096, 1024, "flips"),
        (0.1, 1024, 8192, 65536, 1639, "flips"),  # 16 references: 10 % of their own 16,384
        (0.1, 1, 0, 32768, 410, "dihedral"),  # 4 references x 8 copies: ceil(409.6)
        (1.0, 1024, 8192, 4096, 0, "flips"),  # ratio 1 keeps every patch, copies too
        (0.1, 1024, 8192, 819200, 8192, "flips"),  # 204,800 own patches x 4: coreset_size caps
    ],
)
def test_coreset_target_by_hand(ratio, floor, size, patches, kept, augment):
    from anomalens.methods.patchknn import coreset_target

    settings = PatchKnnSettings(
        coreset_ratio=ratio, coreset_floor=floor, coreset_size=size, augment=augment, fused_recipe="none"
    )
    assert coreset_target(settings, patches) == kept


@pytest.mark.parametrize(
    ("share", "patches", "kept"),
    [
        (0.5, 204800, 4096),  # 200 references: each fused bank half of coreset_size
        (1.0, 204800, 8192),  # models saved before session 37: each up to coreset_size
        (0.5, 16384, 1639),  # 16 references keep 10 % of theirs, below the share anyway
        (0.3, 204800, 2458),  # ceil(0.3 x 8192)
    ],
)
def test_fused_banks_share_coreset_size_by_hand(share, patches, kept):
    from anomalens.methods.patchknn import coreset_target
    from anomalens.methods.recipe_fusion import partner_settings

    settings = PatchKnnSettings(fused_coreset_share=share, augment="none")  # fused_recipe auto: the texture recipe
    assert coreset_target(settings, patches) == kept
    assert coreset_target(partner_settings(settings), patches) == kept


def test_many_references_are_not_augmented():
    from anomalens.images import LoadedImage
    from anomalens.methods import create_method
    from anomalens.methods.patchknn import coreset_target, reference_augmentation

    s = PatchKnnSettings()  # flips, up to 16 references
    assert reference_augmentation(s, 16) == "flips" and reference_augmentation(s, 17) == "none"
    assert reference_augmentation(PatchKnnSettings(augment_max_references=0), 500) == "flips"  # 0: always
    assert coreset_target(s, 16 * 1024 * 4, references=16) == 1639  # 10 % of their own 16,384
    assert coreset_target(s, 20 * 1024, references=20) == 2048  # no copies: 10 % of the bank itself
    assert coreset_target(s, 200 * 1024, references=200) == 4096  # coreset_size caps (half: the fused partner's)
    g = torch.Generator().manual_seed(0)
    refs = [
        LoadedImage(f"ref{i}.png", (torch.rand(32, 32, 3, generator=g) * 255).to(torch.uint8).numpy()) for i in range(3)
    ]
    for limit, copies in ((3, 4), (2, 1)):  # 3 references x 4 x 4 patches, in 4 copies or 1
        method = create_method("patchknn", image_size=32, augment_max_references=limit).fit(refs)
        assert method.bank_.banks["patches"].shape[0] == 3 * 16 * copies


def test_coreset_ratio_keeps_that_share_of_the_references_patches_and_they_score_as_normal():
    from anomalens.images import LoadedImage
    from anomalens.methods import create_method

    g = torch.Generator().manual_seed(0)
    refs = [
        LoadedImage(f"ref{i}.png", (torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()) for i in range(2)
    ]
    # 2 references x 8 x 8 patches x 4 flips = 512: their own 128 are below the floor, all are kept
    # the kNN alone: the bank's Gaussian (fitted on each bank) would differ between the two banks
    # (and the recipe alone: distances, not standardised; the nearest bank patch, which for a reference is itself)
    alone = {"gaussian_weight": 0, "fused_recipe": "none", "few_shot_k": 1}
    whole = create_method("patchknn", image_size=64, **alone).fit(refs)
    quarter = create_method("patchknn", image_size=64, coreset_ratio=0.25, coreset_floor=1, **alone).fit(refs)
    n = whole.bank_.banks["patches"].shape[0]
    assert n == 512 and quarter.bank_.banks["patches"].shape[0] == 32  # a quarter of their own 128
    # every coreset patch is one of the whole bank's
    bank, kept = whole.bank_.banks["patches"], quarter.bank_.banks["patches"]
    exact = "donot_use_mm_for_euclid_dist"
    assert torch.cdist(kept, bank, compute_mode=exact).min(dim=1).values.max() < 1e-5
    # a reference against a quarter of the bank: farther than against all of it, but no farther
    # than the coreset's covering radius (the map only averages patch distances)
    radius = float(torch.cdist(bank, kept, compute_mode=exact).min(dim=1).values.max())
    full, reduced = whole.predict(refs[:1])[0], quarter.predict(refs[:1])[0]
    assert reduced.score >= full.score - 1e-6 and float(full.anomaly_map.max()) < 1e-2
    assert 0 < float(reduced.anomaly_map.max()) <= radius + 1e-3


@pytest.mark.parametrize("mode", ["add", "multiply"])
def test_map_image_share_lifts_each_map_by_its_image_score(mode):
    torch.manual_seed(1)
    feats = F.normalize(torch.randn(2, 4, 4, 8), dim=-1)  # two tiles of one image
    bank = F.normalize(torch.randn(30, 8), dim=-1)
    plain = dict(image_size=32, smoothing_sigma=1.0, length_weight=0, gaussian_weight=0)
    maps, score = score_image(feats, bank, PatchKnnSettings(**plain))
    fused_maps, fused_score = score_image(
        feats, bank, PatchKnnSettings(**plain, map_image_share=0.5, map_image_mode=mode)
    )
    assert float(fused_score) == float(score)  # the image score is taken before the map changes
    expected = 0.5 * maps + 0.5 * score if mode == "add" else maps * float(score) ** 0.5
    torch.testing.assert_close(fused_maps, expected)
    # within the image the order of the pixels is kept (a monotone map of each value)
    assert torch.equal(fused_maps.flatten().argsort(), maps.flatten().argsort())


def test_image_score_in_map_on_arrays_by_hand():
    import numpy as np

    from anomalens.scoring import image_score_in_map

    m = np.array([[0.0, 1.0], [2.0, 4.0]])
    assert image_score_in_map(m, 4.0, 0.0) is m
    np.testing.assert_allclose(image_score_in_map(m, 4.0, 0.25), [[1.0, 1.75], [2.5, 4.0]])
    np.testing.assert_allclose(image_score_in_map(m, 4.0, 0.5, "multiply"), [[0.0, 2.0], [4.0, 8.0]])
    np.testing.assert_allclose(image_score_in_map(m, -1.0, 1.0, "multiply"), np.zeros((2, 2)))  # no sign flip
    with pytest.raises(ValueError, match="map_image_mode"):
        image_score_in_map(m, 1.0, 0.5, "max")
