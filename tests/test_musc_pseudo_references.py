"""`musc` zero-shot with pseudo-references: the batch's lowest-scored images become patchknn's
references (`pseudo_reference_share`), each scored without its own patches; checked against
patchknn fitted on the same images on its own, and for order, small batches, references, size."""

from __future__ import annotations

import random
from dataclasses import replace

import numpy as np
import pytest
import torch
from synthetic import planted_batch, smooth_texture

from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.musc.pseudo_references import (
    HeldImages,
    PseudoReferenceKnn,
    lowest_scored,
    pseudo_reference_count,
    pseudo_reference_settings,
    reduced_copy,
)
from anomalens.methods.patchknn import PatchKnn

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# the plain share (one patchknn recipe), whatever the default: the fused share is test_musc_fused_share.py;
# one pick of the pseudo-references (the mutual score's), whatever the default: later rounds are tested below
FAST = {"image_size": 64, "progress": False, "knn_fused": "none", "pseudo_reference_rounds": 1}


def _images(seeds, size: int = 64, defect: int | None = None) -> list[LoadedImage]:
    return planted_batch(seeds, size=size, defect=defect)


@pytest.mark.parametrize(
    ("share", "batch", "expected"),
    [(0.1, 10, 0), (0.1, 14, 0), (0.1, 15, 2), (0.1, 135, 14), (0.1, 1140, 114), (0.5, 4, 2), (0.5, 3, 2), (0.5, 2, 0)],
)
def test_the_count_is_the_rounded_share_and_none_below_the_minimum(share, batch, expected):
    assert pseudo_reference_count(share, 2, batch) == expected


def test_the_lowest_scores_are_chosen_and_ties_go_by_path_not_order():
    scores = [0.5, 0.1, 0.3, 0.1, 0.9]
    paths = ["e", "d", "c", "b", "a"]
    assert lowest_scored(scores, paths, 3) == [3, 1, 2]  # 0.1 (b), 0.1 (d), 0.3
    order = [4, 2, 0, 3, 1]
    shuffled = lowest_scored([scores[i] for i in order], [paths[i] for i in order], 3)
    assert [order[i] for i in shuffled] == [3, 1, 2]


def test_images_are_held_as_read_or_reduced_to_the_largest_model_side():
    small = _images([1], size=200)[0]
    assert reduced_copy(small, 384) is small
    wide = LoadedImage(path="w.png", rgb=np.full((600, 1500, 3), 77, np.uint8))
    copy = reduced_copy(wide, 384)
    assert copy.size_hw == (384, 960) and copy.path == "w.png"
    assert np.all(copy.rgb == 77)  # a flat image stays flat through the resampling


def test_a_pseudo_reference_is_scored_as_patchknn_fitted_on_the_others():
    images = _images(range(6))
    held = HeldImages(pseudo_reference_settings())
    held.add(images)
    settings = replace(pseudo_reference_settings(), coreset_ratio=1.0)  # no coreset: exactly a refit
    pseudo = PseudoReferenceKnn(held, [1, 3, 4], torch.device("cpu"), settings)
    for i in range(6):
        others = [images[j] for j in (1, 3, 4) if j != i]
        expected = PatchKnn(settings).fit(others).predict([images[i]])[0]
        got = pseudo.output(i)
        assert got.score == pytest.approx(expected.score, abs=1e-5)
        np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, atol=1e-5)


def test_outputs_are_the_weighted_mean_of_the_mutual_score_and_patchknn_on_the_chosen_images():
    images = _images(range(16), defect=5)
    method = create_method("musc", **FAST).fit([])
    outputs = method.predict(images)
    chosen = method.last_batch["pseudo_references"]
    assert len(chosen) == 2 and "q05.png" not in chosen
    mutual = create_method("musc", **FAST, pseudo_reference_share=0.0).fit([]).predict(images)
    ranked = sorted(images, key=lambda img: mutual[images.index(img)].score)
    assert chosen == [img.path for img in ranked[:2]]  # the mutual score's two lowest
    by_path = {img.path: img for img in images}
    knn = PatchKnn(pseudo_reference_settings()).fit([by_path[p] for p in chosen])  # in the chosen order
    for img, out, m in zip(images, outputs, mutual, strict=True):
        if img.path in chosen:
            continue  # scored without its own patches: the test above
        k = knn.predict([img])[0]
        assert out.score == pytest.approx(0.625 * m.score + 0.375 * k.score, abs=1e-5)
        np.testing.assert_allclose(out.anomaly_map, 0.625 * m.anomaly_map + 0.375 * k.anomaly_map, atol=1e-5)
    assert int(np.argmax([o.score for o in outputs])) == 5


@pytest.mark.parametrize("fused", ["none", "textured-surface"])  # the share alone, and fused (knn_fused)
def test_the_order_of_the_batch_does_not_change_the_outputs(fused):
    images = _images(range(16), defect=3)
    method = create_method("musc", **{**FAST, "knn_fused": fused}).fit([])
    first = {img.path: out for img, out in zip(images, method.predict(images), strict=True)}
    shuffled = images[:]
    random.Random(0).shuffle(shuffled)
    for img, out in zip(shuffled, method.predict(shuffled), strict=True):
        assert out.score == pytest.approx(first[img.path].score, abs=1e-5)
        np.testing.assert_allclose(out.anomaly_map, first[img.path].anomaly_map, atol=1e-5)


def test_small_batches_have_no_pseudo_references():
    small = _images(range(6), defect=2)
    on, off = (create_method("musc", **FAST, pseudo_reference_share=w).fit([]) for w in (0.1, 0.0))
    for a, b in zip(on.predict(small), off.predict(small), strict=True):
        assert a.score == b.score
    assert on.last_batch["pseudo_references"] == []


def test_with_references_the_pseudo_references_join_their_bank():
    refs, images = _images([40, 41]), _images(range(6))
    held = HeldImages(pseudo_reference_settings())
    held.add(images)
    settings = replace(pseudo_reference_settings(), coreset_ratio=1.0)  # no coreset: exactly a refit
    fitted = PatchKnn(settings).fit(refs)
    pseudo = PseudoReferenceKnn(held, [2, 5], torch.device("cpu"), references=fitted)
    for i in range(6):
        others = refs + [images[j] for j in (2, 5) if j != i]
        expected = PatchKnn(settings).fit(others).predict([images[i]])[0]
        got = pseudo.output(i)
        assert got.score == pytest.approx(expected.score, abs=1e-5)
        np.testing.assert_allclose(got.anomaly_map, expected.anomaly_map, atol=1e-5)
    alone = PseudoReferenceKnn(held, [], torch.device("cpu"), references=fitted)  # a small batch: the references
    expected = fitted.predict([images[0]])[0]
    assert alone.output(0).score == pytest.approx(expected.score, abs=1e-6)


def test_a_batch_with_references_uses_pseudo_references_and_finds_the_defect():
    method = create_method("musc", **FAST).fit(_images([40, 41]))
    outputs = method.predict(_images(range(16), defect=4))
    chosen = method.last_batch["pseudo_references"]
    assert len(chosen) == 2 and "q04.png" not in chosen
    assert int(np.argmax([o.score for o in outputs])) == 4


def test_large_images_get_maps_of_their_own_size():
    images = _images(range(14)) + [LoadedImage(path="big.png", rgb=smooth_texture(99, 512, cell=64))]
    outputs = create_method("musc", **FAST, pseudo_reference_share=0.2).fit([]).predict(images)
    assert outputs[-1].anomaly_map.shape == (512, 512)
    assert all(o.anomaly_map.shape == (64, 64) for o in outputs[:-1])


def test_a_second_round_picks_the_lowest_joined_scores_of_the_first():
    images = _images(range(16), defect=5)
    settings = {**FAST, "pseudo_reference_rounds": 1}
    mutual = create_method("musc", **settings, pseudo_reference_share=0.0).fit([]).predict(images)
    first = create_method("musc", **settings).fit([])
    first_outputs = first.predict(images)
    second = create_method("musc", **{**settings, "pseudo_reference_rounds": 2}).fit([])
    outputs = second.predict(images)
    # the joined score of round one is the first method's output score: the second round ranks by it
    ranked = sorted(range(16), key=lambda i: (first_outputs[i].score, images[i].path))
    chosen = [images[i].path for i in ranked[:2]]
    assert second.last_batch["pseudo_references"] == chosen
    assert chosen != first.last_batch["pseudo_references"]  # this batch: the joined score picks other images
    by_path = {img.path: img for img in images}
    knn = PatchKnn(pseudo_reference_settings()).fit([by_path[p] for p in chosen])
    for img, out, m in zip(images, outputs, mutual, strict=True):
        if img.path not in chosen:
            assert out.score == pytest.approx(0.625 * m.score + 0.375 * knn.predict([img])[0].score, abs=1e-5)
    assert int(np.argmax([o.score for o in outputs])) == 5
