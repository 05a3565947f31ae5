"""k-th nearest neighbour patch scoring and the memory bank."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from anomalens.scoring import FEW_SHOT_K, ZERO_SHOT_K, MemoryBank, gaussian_smooth, knn_anomaly, upsample_and_smooth


def unit(deg: float) -> list[float]:
    return [math.cos(math.radians(deg)), math.sin(math.radians(deg))]


def test_hand_computed_angles():
    bank = torch.tensor([unit(0), unit(90)])
    query = torch.tensor([unit(0), unit(60), unit(45), unit(180), unit(-90)])
    # Nearest bank vector: 0 deg (cos 1), 90 deg (30 deg away, cos sqrt(3)/2), either (cos sqrt(2)/2),
    # 90 (cos 0), 0 (cos 0).
    expected = 0.5 * (1 - torch.tensor([1.0, math.sqrt(3) / 2, math.sqrt(0.5), 0.0, 0.0]))
    torch.testing.assert_close(knn_anomaly(query, bank), expected)
    # Second nearest: 90 (cos 0), 0 (cos 0.5), either, 0 (cos -1), 90 (cos -1).
    expected2 = 0.5 * (1 - torch.tensor([0.0, 0.5, math.sqrt(0.5), -1.0, -1.0]))
    torch.testing.assert_close(knn_anomaly(query, bank, k=2), expected2)
    assert FEW_SHOT_K == 1 and ZERO_SHOT_K == 2


def test_inputs_are_normalised_and_scores_in_unit_interval():
    torch.manual_seed(0)
    query, bank = torch.randn(50, 8), torch.randn(30, 8)
    scores = knn_anomaly(query * 7, bank * 0.01)
    torch.testing.assert_close(scores, knn_anomaly(query, bank))
    assert scores.min() >= 0 and scores.max() <= 1
    # Brute force reference.
    sim = F.normalize(query, dim=-1) @ F.normalize(bank, dim=-1).T
    torch.testing.assert_close(scores, 0.5 * (1 - sim.max(dim=1).values))


def test_planted_outlier_ranks_first():
    torch.manual_seed(0)
    normal = F.normalize(torch.tensor([1.0, 0.0, 0.0, 0.0]) + 0.05 * torch.randn(64, 4), dim=-1)
    query = normal[:16].clone() + 0.01 * torch.randn(16, 4)
    query[11] = torch.tensor([0.0, 0.0, 1.0, 0.0])
    scores = knn_anomaly(query, normal[16:])
    assert scores.argmax().item() == 11
    assert scores[11] > 5 * scores[torch.arange(16) != 11].max()


def test_zero_shot_uses_second_neighbour():
    # Patches: a (twice), b, c. With k = 2 each patch's own copy is excluded:
    # a's second neighbour is its duplicate -> 0; b's is its nearest other patch.
    a, b, c = unit(0), unit(60), unit(150)
    patches = torch.tensor([a, a, b, c])
    scores = knn_anomaly(patches, patches, k=ZERO_SHOT_K)  # the zero-shot call of the methods
    expected = torch.tensor([0.0, 0.0, 0.5 * (1 - 0.5), 0.5 * (1 - math.cos(math.radians(90)))])
    torch.testing.assert_close(scores, expected, atol=1e-6, rtol=0)
    # k = 1 would find the patch itself: everything scores 0.
    torch.testing.assert_close(knn_anomaly(patches, patches, k=1), torch.zeros(4), atol=1e-6, rtol=0)


def test_chunking_gives_the_same_result():
    torch.manual_seed(0)
    query, bank = torch.randn(103, 16), torch.randn(40, 16)
    whole = knn_anomaly(query, bank, k=3, chunk=10_000)
    for chunk in (1, 7, 50, 103):
        # Same values up to float32 rounding of the matrix product (BLAS blocks rows differently).
        torch.testing.assert_close(knn_anomaly(query, bank, k=3, chunk=chunk), whole, atol=1e-6, rtol=0)


def test_bank_smaller_than_k_errors():
    with pytest.raises(ValueError, match="fewer than k=2"):
        knn_anomaly(torch.randn(3, 4), torch.randn(1, 4), k=2)


def test_memory_bank_add_score_and_state_dict_round_trip():
    torch.manual_seed(0)
    bank = MemoryBank()
    first, second = torch.randn(2, 3, 3, 8), torch.randn(1, 3, 3, 8)
    bank.add("s8", first)
    bank.add("s8", second)
    bank.add("s16", torch.randn(2, 2, 2, 4))
    assert len(bank) == 2 and "s8" in bank and "s32" not in bank
    assert bank.banks["s8"].shape == (27, 8)
    torch.testing.assert_close(bank.banks["s8"].norm(dim=-1), torch.ones(27))
    query = torch.randn(1, 3, 3, 8)
    expected = knn_anomaly(query.reshape(-1, 8), torch.cat([first.reshape(-1, 8), second.reshape(-1, 8)]))
    torch.testing.assert_close(knn_anomaly(query.reshape(-1, 8), bank.banks["s8"], k=FEW_SHOT_K), expected)
    # A query patch copied from the bank scores 0.
    assert knn_anomaly(second[0, 1, 2][None], bank.banks["s8"])[0] < 1e-6

    state = bank.state_dict()
    assert set(state) == {"bank.s8", "bank.s16"}
    restored = MemoryBank()
    restored.load_state_dict({**state, "other.key": torch.zeros(1)})
    assert set(restored.banks) == {"s8", "s16"}
    for key in ("s8", "s16"):
        assert torch.equal(restored.banks[key], bank.banks[key])
    torch.testing.assert_close(knn_anomaly(query.reshape(-1, 8), restored.banks["s8"]), expected)


def test_few_shot_nearest_is_the_row_maximum_of_topk():
    # k = 1 takes a row maximum (faster than topk): the same value, to the last bit.
    g = torch.Generator().manual_seed(5)
    query, bank = torch.randn(300, 24, generator=g), torch.randn(700, 24, generator=g)
    sim = F.normalize(query, dim=-1) @ F.normalize(bank, dim=-1).T
    expected = (0.5 * (1.0 - sim.topk(1, dim=1).values[:, 0])).clamp(0.0, 1.0)
    assert torch.equal(knn_anomaly(query, bank, k=1), expected)


def test_nearest_neighbour_over_bank_blocks_equals_the_whole_matrix():
    # a bank of 2.5 blocks (BANK_BLOCK patches each) and query chunks: the same values as topk's
    # over the whole similarity matrix, bit for bit
    from anomalens.scoring import BANK_BLOCK

    generator = torch.Generator().manual_seed(5)
    query = torch.randn(300, 16, generator=generator)
    bank = torch.randn(BANK_BLOCK * 5 // 2, 16, generator=generator)
    q, b = torch.nn.functional.normalize(query, dim=-1), torch.nn.functional.normalize(bank, dim=-1)
    expected = (0.5 * (1.0 - (q @ b.T).topk(1, dim=1).values[:, 0])).clamp(0.0, 1.0)
    assert torch.equal(knn_anomaly(query, bank, chunk=128), expected)


@pytest.mark.parametrize("k", [1, 3])
def test_euclidean_knn_is_the_kth_smallest_cdist(k):
    # the "euclidean" metric (patchknn `magnitudes`) against torch.cdist, over bank blocks and query chunks
    from anomalens.scoring import BANK_BLOCK

    g = torch.Generator().manual_seed(7)
    query, bank = 3 * torch.randn(300, 16, generator=g), 2 * torch.randn(BANK_BLOCK * 3 // 2, 16, generator=g)
    expected = torch.cdist(query, bank).topk(k, dim=1, largest=False).values[:, k - 1]
    got = knn_anomaly(query, bank, k=k, chunk=128, metric="euclidean")
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert got.max() > 1.0  # not clipped to the cosine's [0, 1]


def test_euclidean_knn_keeps_small_distances_between_long_vectors():
    # near-copies of long bank rows: ||q||^2 - 2 (q.b - ||b||^2 / 2) would lose 1e-3 here to
    # float32 cancellation; the distance to the chosen neighbour is computed directly
    from anomalens.export.graph import bank_distance

    g = torch.Generator().manual_seed(3)
    bank = 10 * torch.randn(2000, 32, generator=g)
    offset = 1e-3 * torch.randn(100, 32, generator=g)
    query = bank[:100] + offset
    expected = offset.norm(dim=-1)  # each near-copy's nearest row is its original
    graph = bank_distance(query[None], bank, 1, metric="euclidean")[0]  # the ONNX graph's version
    for got in (knn_anomaly(query, bank, metric="euclidean"), graph):
        torch.testing.assert_close(got, expected, atol=2e-6, rtol=1e-3)


def test_euclidean_knn_by_hand_sees_length_cosine_does_not():
    bank = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    query = torch.tensor([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    torch.testing.assert_close(knn_anomaly(query, bank, metric="euclidean"), torch.tensor([2.0, 0.0, 1.0]))
    cosine = knn_anomaly(query, bank)
    assert cosine[0] == 0 and cosine[1] == 0  # a longer copy of a bank patch is normal to the cosine
    with pytest.raises(ValueError, match="metric"):
        knn_anomaly(query, bank, metric="manhattan")


@pytest.mark.parametrize(
    "shape, size, sigma",
    [
        ((1, 32, 32), 256, 4.0),
        ((3, 30, 17), 240, 2.0),
        ((1, 8, 8), 64, 4.0),
        ((2, 2, 3), 16, 4.0),  # the reflect pad truncated to the side
        ((1, 5, 5), 40, 0.0),
    ],
)
def test_upsample_and_smooth_is_bilinear_upsampling_then_the_gaussian(shape, size, sigma):
    maps = torch.rand(*shape, generator=torch.Generator().manual_seed(3))
    upsampled = F.interpolate(maps[:, None], size=(size, size), mode="bilinear", align_corners=False)[:, 0]
    expected = gaussian_smooth(upsampled, sigma)
    got = upsample_and_smooth(maps, size, sigma)
    assert got.shape == (shape[0], size, size)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_upsample_and_smooth_of_a_constant_map_is_that_constant():
    # both operations preserve constants (normalised kernel, reflect padding): a hand-computed case
    got = upsample_and_smooth(torch.full((1, 4, 6), 0.25), 48, 4.0)
    torch.testing.assert_close(got, torch.full((1, 48, 48), 0.25), rtol=0, atol=1e-6)


@pytest.mark.parametrize("k", [1, 16, 17, 400, 512])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16])
@pytest.mark.parametrize("numpy_threads", [0, 1024])  # torch's kthvalue / numpy's selection above rank 16
def test_kth_largest_values_is_the_sorted_rows_kth(k, dtype, numpy_threads, monkeypatch):
    # both selections give the k-th of each row sorted descending, ties (rounded values) and -inf
    # (masked neighbours) included
    from anomalens import scoring
    from anomalens.scoring import kth_largest_values

    monkeypatch.setattr(scoring, "NUMPY_SELECTION_MAX_THREADS", numpy_threads)

    g = torch.Generator().manual_seed(11)
    values = (torch.randn(37, 512, generator=g) * 4).round().to(dtype)
    values[:, :20] = float("-inf")
    expected = values.sort(dim=1, descending=True).values[:, k - 1]
    got = kth_largest_values(values, k)
    assert got.dtype == dtype
    assert torch.equal(got, expected)
