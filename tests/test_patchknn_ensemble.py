"""patchknn on an ensemble of EfficientNet-Lite backbones ("efficientnet-lite0+efficientnet-lite2"):
the joined features, the distances they give (the mean of the members' squared distances), zero-shot,
save/load, ONNX export, and clear refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from synthetic import noisy_part

from anomalens.backbones import EfficientNetEnsemble, create_patch_backbone, ensemble_members, is_efficientnet
from anomalens.detector import Detector, load_detector
from anomalens.methods import create_method
from anomalens.methods.patch_distances import length_channels, patch_anomalies, zero_shot_rank
from anomalens.methods.patchknn import PatchKnnSettings

pytestmark = pytest.mark.usefixtures("one_torch_thread")
PAIR = "efficientnet-lite0+efficientnet-lite2"


image = noisy_part  # the shared synthetic part (tests/synthetic.py)


def test_names():
    assert ensemble_members(PAIR) == ("efficientnet-lite0", "efficientnet-lite2")
    assert ensemble_members("efficientnet-lite0") == ()
    assert is_efficientnet(PAIR) and is_efficientnet("efficientnet-lite1")
    assert not is_efficientnet("ViT-B-16")
    for bad in ("efficientnet-lite0+efficientnet-lite0", "efficientnet-lite0+resnet50", "efficientnet-lite0+"):
        with pytest.raises(ValueError, match="two or more different EfficientNet-Lite"):
            ensemble_members(bad)


def test_the_joined_features_are_the_members_directions_then_lengths_over_sqrt_n():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 64)
    ensemble = create_patch_backbone(PAIR, image_size=64, length_weight=4.0, length_log=True)
    assert isinstance(ensemble, EfficientNetEnsemble) and ensemble.length_channels == 4
    lite0 = create_patch_backbone("efficientnet-lite0", image_size=64, length_weight=4.0, length_log=True)(x)
    lite2 = create_patch_backbone("efficientnet-lite2", image_size=64, length_weight=4.0, length_log=True)(x)
    joined = ensemble(x)
    by_hand = torch.cat([lite0[..., :-2], lite2[..., :-2], lite0[..., -2:], lite2[..., -2:]], dim=-1) / 2**0.5
    assert joined.shape == (2, 8, 8, 152 + 168 + 4)
    torch.testing.assert_close(joined, by_hand, atol=1e-6, rtol=0)
    # the directions of each member are unit vectors: the joined directions have norm 1
    torch.testing.assert_close(joined[..., :-4].norm(dim=-1), torch.ones(2, 8, 8), atol=1e-5, rtol=0)


def test_distances_to_a_bank_are_the_mean_of_the_members_squared_distances():
    torch.manual_seed(1)
    s = PatchKnnSettings(backbone=PAIR, image_size=64, gaussian_weight=0)  # the kNN alone
    assert length_channels(s) == 4
    a = create_patch_backbone("efficientnet-lite0", image_size=64, length_weight=4.0, length_log=True)
    b = create_patch_backbone("efficientnet-lite2", image_size=64, length_weight=4.0, length_log=True)
    ensemble = EfficientNetEnsemble([a, b])
    query, ref = torch.randn(1, 3, 64, 64), torch.randn(1, 3, 64, 64)
    bank = ensemble(ref).reshape(-1, 324)
    got = patch_anomalies(ensemble(query), bank, s)[0]  # few-shot k = 1: the nearest bank patch
    qa, qb = a(query)[0].reshape(-1, 154), b(query)[0].reshape(-1, 170)
    ra, rb = a(ref)[0].reshape(-1, 154), b(ref)[0].reshape(-1, 170)
    squared = (torch.cdist(qa, ra) ** 2 + torch.cdist(qb, rb) ** 2) / 2  # one neighbour for both members
    torch.testing.assert_close(got.reshape(-1), squared.min(dim=1).values.sqrt(), atol=1e-4, rtol=1e-4)


def test_zero_shot_compares_the_joined_directions_mean_of_the_cosines():
    torch.manual_seed(2)
    s = PatchKnnSettings(backbone=PAIR, image_size=64)
    a = create_patch_backbone("efficientnet-lite0", image_size=64, length_weight=4.0, length_log=True)
    b = create_patch_backbone("efficientnet-lite2", image_size=64, length_weight=4.0, length_log=True)
    x = torch.randn(1, 3, 64, 64)
    got = patch_anomalies(EfficientNetEnsemble([a, b])(x), None, s)[0].reshape(-1)
    da, db = a(x)[0, ..., :-2].reshape(-1, 152), b(x)[0, ..., :-2].reshape(-1, 168)
    cos = (da @ da.T + db @ db.T) / 2
    # the other patch at zero_shot_quantile's rank among the others (the patch itself is the first)
    k = 1 + zero_shot_rank(cos.shape[0], s.zero_shot_k, s.zero_shot_quantile)
    kth = cos.topk(k, dim=1).values[:, k - 1]
    torch.testing.assert_close(got, (0.5 * (1 - kth)).clamp(0, 1), atol=1e-5, rtol=0)


def test_a_fitted_ensemble_finds_the_defect_saves_loads_and_exports(tmp_path):
    pytest.importorskip("onnxruntime")
    from anomalens.export import export_onnx, load_onnx_detector

    refs, queries = [image(1), image(2)], [image(3), image(4, defect=True)]
    det = Detector("patchknn", image_size=64, backbone=PAIR).fit(refs)
    results = det.predict(queries)
    assert results[1].score > 2 * results[0].score
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method.backbone.name == PAIR
    assert [r.score for r in again.predict(queries)] == pytest.approx([r.score for r in results], abs=1e-6)
    export_onnx(det, tmp_path / "m.onnx")  # verifies the graph against PyTorch itself
    exported = load_onnx_detector(tmp_path / "m.onnx")
    for a, b in zip(results, exported.predict(queries)):
        assert abs(a.score - b.score) <= 1e-4 and np.abs(a.anomaly_map - b.anomaly_map).max() <= 1e-4


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"coarse_weight": 0.5}, "coarse_weight needs one EfficientNet backbone"),
        ({"blocks": (4, 10)}, "an ensemble reads each member's default blocks"),
        ({"magnitudes": True}, "an ensemble reads each member's default blocks"),
    ],
)
def test_what_an_ensemble_refuses(settings, message):
    with pytest.raises(ValueError, match=message):
        create_method("patchknn", image_size=64, backbone=PAIR, **settings)
