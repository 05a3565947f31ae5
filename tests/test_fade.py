"""FADE on a tiny random CLIP: every formula against a hand computation on small tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalens import Detector, load_detector
from anomalens.geometry import to_model_input
from anomalens.images import LoadedImage
from anomalens.methods.fade import Fade, FadeSettings, class_embedding, two_class_probability
from anomalens.scoring import knn_anomaly
from anomalens.text.features import TextFeatureCache

TINY = {"backbone": "test-tiny", "classification_size": 32, "segmentation_sizes": (32, 64)}


def _images(n: int, seed: int = 0, shape=(40, 56)) -> list[LoadedImage]:
    rng = np.random.default_rng(seed)
    return [LoadedImage(f"img{i}.png", rng.integers(0, 256, (*shape, 3), dtype=np.uint8)) for i in range(n)]


@pytest.fixture(scope="module")
def fade() -> Fade:
    torch.manual_seed(0)
    return Fade(FadeSettings(**TINY), text_cache=TextFeatureCache(cache_dir=None)).fit([])


def test_two_class_probability_by_hand():
    normal = torch.tensor([1.0, 0.0])
    anomalous = torch.tensor([0.0, 1.0])
    feats = torch.tensor([[3.0, 4.0]])  # unit vector (0.6, 0.8): cos 0.6 to normal, 0.8 to anomalous
    p = two_class_probability(feats, normal, anomalous, temperature=0.01)
    expected = np.exp(80) / (np.exp(60) + np.exp(80))  # softmax of (60, 80)
    assert float(p[0]) == pytest.approx(expected, rel=1e-6)
    p_soft = two_class_probability(feats, normal, anomalous, temperature=1.0)
    assert float(p_soft[0]) == pytest.approx(np.exp(0.8) / (np.exp(0.6) + np.exp(0.8)), rel=1e-6)


def test_class_embedding_is_the_mean_renormalised_only_on_request():
    feats = F.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0]]), dim=-1)
    torch.testing.assert_close(class_embedding(feats), torch.tensor([0.5, 0.5]))  # released: plain mean
    emb = class_embedding(feats, renormalize=True)
    torch.testing.assert_close(emb, torch.tensor([2**-0.5, 2**-0.5]))


def test_combination_defaults_match_released_configuration(fade):
    s = fade.settings
    assert (s.as_zero_shot_language_weight, s.as_zero_shot_vision_scale) == (0.5, 80.0)
    assert (s.as_few_shot_language_weight, s.as_few_shot_vision_scale) == (0.15, 3.5)
    assert (s.ac_few_shot_language_weight, s.ac_few_shot_vision_scale) == (0.5, 3.5)
    assert s.segmentation_sizes == (32, 64) and FadeSettings().segmentation_sizes == (240, 448, 896)
    assert FadeSettings().temperature == 0.01 and FadeSettings().backbone == "ViT-B-16-plus-240"
    language = torch.tensor([[0.2, 0.9]])
    vision = torch.tensor([[0.001, 0.02]])
    # AS zero-shot: 0.5 * L + 0.5 * 80 * V, clipped
    torch.testing.assert_close(fade.combine_maps(language, vision, few_shot=False), torch.tensor([[0.14, 1.0]]))
    # AS few-shot: 0.15 * L + 0.85 * 3.5 * V
    expected = torch.tensor([[0.15 * 0.2 + 0.85 * 3.5 * 0.001, 0.15 * 0.9 + 0.85 * 3.5 * 0.02]])
    torch.testing.assert_close(fade.combine_maps(language, vision, few_shot=True), expected)
    # AC zero-shot = language; AC few-shot = (L + max(3.5 V)) / 2
    assert fade.combine_scores(0.3, vision, few_shot=False) == pytest.approx(0.3)
    assert fade.combine_scores(0.3, vision, few_shot=True) == pytest.approx((0.3 + 3.5 * 0.02) / 2)
    assert fade.combine_scores(0.9, torch.tensor([[1.0]]), few_shot=True) == 1.0  # clipped


def test_language_map_is_the_scale_average(fade):
    """Recompute the zero-shot language map by hand from the backbone's GEM tokens."""
    images = _images(1)
    text = fade.text_features()
    maps = []
    for size in (32, 64):
        x = to_model_input(images[0].rgb, size, fade.backbone.mean, fade.backbone.std)[0][None]
        feats = fade.backbone(x, gem_from=fade.backbone.num_layers - 5)
        gem = F.normalize(fade.backbone.project(feats.gem[0, 1:]), dim=-1)
        logits = torch.stack([gem @ text.seg_normal, gem @ text.seg_anomalous], -1) / 0.01
        g = size // 8
        m = logits.softmax(-1)[:, 1].view(1, 1, g, g)
        maps.append(F.interpolate(m, size=(8, 8), mode="bilinear", align_corners=False)[0, 0])
    expected = torch.stack(maps).mean(0)
    encoded = fade.encode(images)
    got = []
    for scale in encoded["scales"].values():
        g = scale["grid"][0]
        p = two_class_probability(scale["gem"][0], text.seg_normal, text.seg_anomalous, 0.01).view(1, 1, g, g)
        got.append(F.interpolate(p, size=(8, 8), mode="bilinear", align_corners=False)[0, 0])
    torch.testing.assert_close(torch.stack(got).mean(0), expected, atol=1e-5, rtol=1e-5)
    # and through predict, with language-only segmentation, the map is that average upsampled
    lang_only = Fade(
        FadeSettings(**TINY, segmentation_mode="language"), backbone=fade.backbone, text_cache=fade.text_cache
    ).fit([])
    out = lang_only.predict(images)[0]
    assert out.anomaly_map.shape == (40, 56)
    assert out.anomaly_map.max() <= expected.max() + 1e-5 and out.anomaly_map.min() >= expected.min() - 1e-5


def test_zero_shot_vision_uses_second_neighbour_of_own_gem_patches(fade):
    images = _images(1, seed=3)
    settings = FadeSettings(**TINY, segmentation_mode="vision", as_zero_shot_vision_scale=1.0)
    vision_only = Fade(settings, backbone=fade.backbone, text_cache=fade.text_cache).fit([])
    encoded = fade.encode(images)
    expected = []
    for scale in encoded["scales"].values():
        g = scale["grid"][0]
        v = knn_anomaly(scale["gem"][0], scale["gem"][0], k=2).view(1, 1, g, g)
        expected.append(F.interpolate(v, size=(8, 8), mode="bilinear", align_corners=False)[0, 0])
    expected = torch.stack(expected).mean(0)
    # the k=2 rule: no patch scores 0 unless it has an exact duplicate
    assert expected.min() > 0
    out = vision_only.predict(images)[0]
    assert out.anomaly_map.max() == pytest.approx(float(expected.max()), abs=0.02)


def test_few_shot_reference_equal_to_query_scores_low(fade):
    images = _images(2, seed=5)
    det = Fade(FadeSettings(**TINY), backbone=fade.backbone, text_cache=fade.text_cache)
    det.fit(images[:1])
    same, other = det.predict(images)
    # The query is its own reference: vision distance 0 everywhere, AC = language / 2 at most.
    assert same.anomaly_map.max() <= 0.15 + 1e-4
    assert same.score <= 0.5 + 1e-6
    assert other.anomaly_map.max() > same.anomaly_map.max()


def test_descriptions_are_top5_anomalous_prompts(fade):
    out = fade.predict(_images(1))[0]
    texts = [t for t, _ in out.descriptions]
    sims = [s for _, s in out.descriptions]
    assert len(texts) == 5 and sims == sorted(sims, reverse=True)
    assert set(texts) <= set(fade.text_features().descriptions)


def test_deterministic(fade):
    a = fade.predict(_images(2, seed=9))
    b = fade.predict(_images(2, seed=9))
    for x, y in zip(a, b):
        assert x.score == y.score
        np.testing.assert_array_equal(x.anomaly_map, y.anomaly_map)


def test_batch_and_single_image_agree(fade):
    images = _images(3, seed=11)
    together = fade.predict(images)
    alone = [fade.predict([img])[0] for img in images]
    for x, y in zip(together, alone):
        assert x.score == pytest.approx(y.score, abs=1e-5)
        np.testing.assert_allclose(x.anomaly_map, y.anomaly_map, atol=1e-5)


def test_text_cache_invalidation(tmp_path, fade):
    cache = TextFeatureCache(cache_dir=tmp_path)
    det = Fade(FadeSettings(**TINY, category="bottle"), backbone=fade.backbone, text_cache=cache)
    det.text_features()
    first = cache.computed
    assert first > 0
    det._text = None
    det.text_features()
    assert cache.computed == first  # same category, ensemble, backbone: cached
    det.set_category("screw")
    det.text_features()
    # the two classification lists and the description list (which holds them) change; segmentation does not
    assert cache.computed == first + 3
    # another process (new cache object) reads the disk cache
    cache2 = TextFeatureCache(cache_dir=tmp_path)
    det2 = Fade(FadeSettings(**TINY, category="screw"), backbone=fade.backbone, text_cache=cache2)
    det2.text_features()
    assert cache2.computed == 0
    # different backbone weights: recomputed
    torch.manual_seed(123)
    det3 = Fade(FadeSettings(**TINY, category="screw"), text_cache=cache2)
    det3.text_features()
    assert cache2.computed > 0


def test_user_prompt_file_changes_features(tmp_path, fade):
    path = tmp_path / "mine.json"
    path.write_text('{"normal": ["a clean surface."], "anomalous": ["a scratched surface."]}')
    det = Fade(FadeSettings(**TINY, prompts=str(path)), backbone=fade.backbone, text_cache=fade.text_cache)
    assert "a scratched surface." in det.text_features().descriptions
    assert not torch.allclose(det.text_features().seg_anomalous, fade.text_features().seg_anomalous)


def test_save_and_load_give_identical_scores(tmp_path):
    torch.manual_seed(0)
    det = Detector("fade", **TINY).fit(_images(2, seed=1))
    before = det.predict(_images(2, seed=2))
    det.save(tmp_path / "model")
    torch.manual_seed(0)  # the tiny random backbone is rebuilt from the same seed
    loaded = load_detector(tmp_path / "model")
    after = loaded.predict(_images(2, seed=2))
    for x, y in zip(before, after):
        assert x.score == pytest.approx(y.score, abs=1e-6)
        np.testing.assert_allclose(x.anomaly_map, y.anomaly_map, atol=1e-6)


def test_sizes_must_fit_the_patch_grid():
    with pytest.raises(ValueError, match="multiple of the patch size"):
        Fade(FadeSettings(backbone="test-tiny", classification_size=30, segmentation_sizes=(32,)))


def test_missing_weights_is_a_clear_error():
    from anomalens.backbones.clip import MissingWeightsError

    with pytest.raises(MissingWeightsError, match="--weights"):
        Detector("fade")


def test_category_set_after_construction_is_saved_and_reloaded(tmp_path):
    """set_category updates settings.category, so a saved model reloads with the same prompts
    for its text embeddings and its descriptions (it used to reload the old category's)."""
    from anomalens.detector import load_detector

    torch.manual_seed(0)
    det = Detector("fade", **TINY)
    det.fit(_images(2, seed=21))
    det.method.set_category("screw")
    assert det.settings["category"] == "screw"
    expected = det.predict(_images(1, seed=22))[0]
    det.save(tmp_path / "model")
    torch.manual_seed(0)  # the same random tiny weights as the saved model was built with
    loaded = load_detector(tmp_path / "model")
    assert loaded.method.settings.category == "screw"
    got = loaded.predict(_images(1, seed=22))[0]
    assert got.descriptions == expected.descriptions and got.score == pytest.approx(expected.score, abs=1e-6)
    assert any("screw" in text for text in loaded.method.text_features().descriptions)
