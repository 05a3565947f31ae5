"""WinCLIP / WinCLIP+ on the random `test-tiny` CLIP (32 px input: a 4 x 4 grid of 8 px patches)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from anomalens.geometry import to_model_input
from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods import winclip as winclip_module
from anomalens.methods.winclip import (
    WinClip,
    WinClipSettings,
    coverage,
    harmonic_aggregation,
    window_indices,
)
from anomalens.text.features import TextFeatureCache
from anomalens.text.prompts import winclip_prompts

SIZE = 32
TEXT_CACHE = TextFeatureCache(cache_dir=None)  # in memory; shared, as all models here share weights


def make_model(**overrides) -> WinClip:
    torch.manual_seed(0)  # same random weights for every model built here
    settings = WinClipSettings(**{"backbone": "test-tiny", "image_size": SIZE, **overrides})
    return WinClip(settings, text_cache=TEXT_CACHE).fit([])  # zero-shot unless a test fits references


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def model() -> WinClip:
    return make_model()


def image(seed: int, hw: tuple[int, int] = (SIZE, SIZE)) -> LoadedImage:
    rng = np.random.default_rng(seed)
    return LoadedImage(path=f"img{seed}.png", rgb=rng.integers(0, 256, (*hw, 3), dtype=np.uint8))


def model_input(m: WinClip, img: LoadedImage) -> torch.Tensor:
    return to_model_input(img.rgb, SIZE, m.backbone.mean, m.backbone.std)[0][None]


# ---- windows -------------------------------------------------------------------------------------


def covered_times(index: int, grid: int, scale: int) -> int:
    """How many stride-1 windows of one axis cover position `index`."""
    return min(index, grid - scale) - max(0, index - scale + 1) + 1


@pytest.mark.parametrize(("grid", "scale"), [(4, 2), (4, 3), (15, 2), (15, 3), (5, 5)])
def test_window_counts_and_coverage(grid, scale):
    windows = window_indices((grid, grid), scale)
    assert windows.shape == ((grid - scale + 1) ** 2, scale * scale)
    counts = coverage(windows, grid * grid).sum(0).view(grid, grid)
    expected = torch.tensor(
        [[covered_times(i, grid, scale) * covered_times(j, grid, scale) for j in range(grid)] for i in range(grid)]
    )
    assert torch.equal(counts.long(), expected)


def test_window_patches_are_row_major_blocks():
    windows = window_indices((4, 4), 2)
    assert windows[0].tolist() == [0, 1, 4, 5]
    assert windows[1].tolist() == [1, 2, 5, 6]
    assert windows[3].tolist() == [4, 5, 8, 9]  # second row of windows starts at patch row 1
    with pytest.raises(ValueError, match="does not fit"):
        window_indices((4, 4), 5)


def test_harmonic_aggregation_by_hand():
    # A 2 x 3 grid with 2 x 2 windows: window 0 covers columns 0-1, window 1 columns 1-2.
    windows = window_indices((2, 3), 2)
    w0, w1 = 0.2, 0.6
    out = harmonic_aggregation(torch.tensor([[w0, w1]]), coverage(windows, 6))
    both = 2 / (1 / w0 + 1 / w1)
    torch.testing.assert_close(out, torch.tensor([[w0, both, w1, w0, both, w1]]))


def test_harmonic_aggregation_zero_score_gives_zero():
    windows = window_indices((2, 3), 2)
    out = harmonic_aggregation(torch.tensor([[0.0, 0.5]]), coverage(windows, 6))
    assert out[0, 1] == 0 and out[0, 2] == pytest.approx(0.5)


# ---- encoder -------------------------------------------------------------------------------------


def test_window_encoder_equals_open_clip_on_gathered_tokens(model):
    visual = model.backbone.model.visual
    x = model_input(model, image(1))
    tokens, _ = model.backbone.embed(x)
    got = model.encode_windows(tokens, model.windows[0])
    # By hand: patch embeddings + positional embeddings, gather class token and window, ln_pre,
    # open_clip's residual blocks one by one, ln_post and proj of the class token.
    with torch.no_grad():
        patches = visual.conv1(x).flatten(2).transpose(1, 2)
        full = torch.cat([visual.class_embedding.view(1, 1, -1), patches], 1) + visual.positional_embedding
        for w, window in enumerate(model.windows[0].tolist()):
            seq = visual.ln_pre(full[:, [0, *(p + 1 for p in window)]])
            for block in visual.transformer.resblocks:
                seq = block(seq)
            expected = visual.ln_post(seq[:, 0]) @ visual.proj
            torch.testing.assert_close(got[:, w], expected, atol=1e-5, rtol=1e-5)


def test_window_of_the_whole_grid_is_clips_image_embedding(model):
    x = model_input(model, image(2))
    tokens, _ = model.backbone.embed(x)
    whole = model.encode_windows(tokens, window_indices((4, 4), 4))[:, 0]
    with torch.no_grad():
        torch.testing.assert_close(whole, model.backbone.model.encode_image(x), atol=1e-5, rtol=1e-5)


# ---- zero-shot -----------------------------------------------------------------------------------


def test_zero_shot_image_score_by_hand(model):
    img = image(3)
    out = model.predict([img])[0]
    normal, anomalous = winclip_prompts("object")
    feats = model.text_cache.encode(model.backbone, [*normal, *anomalous])
    proto_n = F.normalize(feats[: len(normal)].mean(0), dim=0)
    proto_a = F.normalize(feats[len(normal) :].mean(0), dim=0)
    with torch.no_grad():
        emb = F.normalize(model.backbone.model.encode_image(model_input(model, img))[0], dim=0)
    c_n, c_a = float(emb @ proto_n), float(emb @ proto_a)
    expected = np.exp(100 * c_a) / (np.exp(100 * c_n) + np.exp(100 * c_a))
    assert out.score == pytest.approx(expected, abs=1e-5)


def test_zero_shot_outputs_shape_range_and_descriptions(model):
    img = image(4, hw=(40, 56))
    out = model.predict([img])[0]
    assert out.anomaly_map.shape == (40, 56) and out.anomaly_map.dtype == np.float32
    assert 0 <= out.anomaly_map.min() and out.anomaly_map.max() <= 1
    assert len(out.descriptions) == 5
    assert all(text in model.anomalous_prompts for text, _ in out.descriptions)
    sims = [s for _, s in out.descriptions]
    assert sims == sorted(sims, reverse=True)


def test_zero_shot_map_is_harmonic_mean_of_scales(model):
    x = model_input(model, image(5))
    _, maps, feats = model.score_inputs(x)
    image_score, _ = model.zero_shot_maps(feats)
    per_scale = [image_score[:, None].expand(-1, 16)]
    for emb, cover in zip(feats.windows, model.covers):
        probs = winclip_module.anomaly_probability(emb, model.prototypes, 0.01)
        per_scale.append(harmonic_aggregation(probs, cover))
    expected = 3 / sum(1 / s for s in per_scale)
    torch.testing.assert_close(maps.view(1, -1), expected)


def test_predict_is_deterministic(model):
    imgs = [image(6), image(7)]
    a, b = model.predict(imgs), model.predict(imgs)
    for x, y in zip(a, b):
        assert x.score == y.score
        np.testing.assert_array_equal(x.anomaly_map, y.anomaly_map)


def test_batching_does_not_change_results():
    imgs = [image(i) for i in range(3)]
    big, small = make_model(batch_size=8, window_batch=1024), make_model(batch_size=1, window_batch=5)
    for x, y in zip(big.predict(imgs), small.predict(imgs)):
        assert x.score == pytest.approx(y.score, abs=1e-6)
        np.testing.assert_allclose(x.anomaly_map, y.anomaly_map, atol=1e-6)


def test_set_category_changes_text_features():
    m = make_model()
    before = m.prototypes.clone()
    m.set_category("metal_nut")
    assert not torch.allclose(before, m.prototypes)
    assert all("metal nut" in p for p in m.normal_prompts + m.anomalous_prompts)
    assert m.normal_text.shape[0] == len(winclip_prompts("metal nut")[0])


# ---- few-shot ------------------------------------------------------------------------------------


def test_reference_identical_to_query_gives_no_vision_anomaly():
    m = make_model()
    img = image(8)
    zero = m.predict([img])[0]
    m.fit([img])
    assert m.few_shot and m.num_references == 1
    _, _, feats = m.score_inputs(model_input(m, img))
    assert float(m.few_shot_maps(feats).max()) < 1e-5
    few = m.predict([img])[0]
    # Image score: mean of the zero-shot score and the (zero) vision maximum; map likewise.
    assert few.score == pytest.approx(zero.score / 2, abs=1e-5)
    np.testing.assert_allclose(few.anomaly_map, zero.anomaly_map / 2, atol=1e-5)


def test_few_shot_other_image_scores_higher_than_reference():
    m = make_model()
    m.fit([image(9)])
    _, _, feats = m.score_inputs(torch.cat([model_input(m, image(9)), model_input(m, image(10))]))
    vision = m.few_shot_maps(feats)
    assert vision[1].mean() > vision[0].mean()


def test_state_dict_round_trip():
    fitted = make_model()
    fitted.fit([image(11), image(12)])
    state = fitted.state_dict()
    assert set(state) == {"bank.patches", "bank.window2", "bank.window3"}
    assert state["bank.window2"].shape[0] == 2 * 9 and state["bank.patches"].shape[0] == 2 * 16
    restored = make_model()
    restored.load_state_dict(state)
    assert restored.few_shot
    query = [image(13)]
    a, b = fitted.predict(query)[0], restored.predict(query)[0]
    assert a.score == b.score
    np.testing.assert_array_equal(a.anomaly_map, b.anomaly_map)
    fitted.fit([])
    assert not fitted.few_shot and fitted.num_references == 0


def test_registered_and_random_weights_setting(monkeypatch):
    monkeypatch.setattr(winclip_module, "DEFAULT_CACHE", TextFeatureCache(cache_dir=None))
    m = create_method("winclip", backbone="test-tiny", image_size=48, weights="random")
    assert isinstance(m, WinClip) and m.uses_text
    assert m.grid == (6, 6) and [w.shape[0] for w in m.windows] == [25, 16]
    assert m.describe_backbone() == "test-tiny:random"
    with pytest.raises(ValueError, match="multiple of the patch size"):
        make_model(image_size=36)
