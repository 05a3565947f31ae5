"""patchknn's few-shot rank (`few_shot_k`): with a few references on EfficientNet a patch's distance is to its
3rd nearest bank patch, otherwise to its nearest; fit resolves it, a saved model keeps it, musc keeps the nearest."""

from __future__ import annotations

from pathlib import Path

import torch
from PIL import Image

from anomalens.detector import Detector, load_detector
from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.musc.pseudo_references import musc_references_knn_settings
from anomalens.methods.patch_distances import FEW_REFERENCES, few_shot_rank, patch_anomalies
from anomalens.methods.patchknn import PatchKnnSettings


def images(n: int, seed: int, side: int = 48) -> list[LoadedImage]:
    g = torch.Generator().manual_seed(seed)
    return [
        LoadedImage(f"img{seed}_{i}.png", (torch.rand(side, side, 3, generator=g) * 255).to(torch.uint8).numpy())
        for i in range(n)
    ]


def test_the_unset_rank_follows_the_backbone_and_the_number_of_references():
    s = PatchKnnSettings()
    assert s.few_shot_k is None and FEW_REFERENCES == 16
    assert [few_shot_rank(s, n) for n in (1, 4, 16, 17, 200)] == [3, 3, 3, 1, 1]
    assert few_shot_rank(s) == 1  # no count (a bank built outside fit): the nearest
    assert few_shot_rank(PatchKnnSettings(backbone="efficientnet-lite0+efficientnet-lite2"), 4) == 3
    assert few_shot_rank(PatchKnnSettings(backbone="ViT-B-16-plus-240"), 4) == 1  # FADE's vision guidance: k = 1
    assert few_shot_rank(PatchKnnSettings(few_shot_k=2), 200) == 2  # a rank you give is kept
    assert musc_references_knn_settings().few_shot_k == 1  # musc's share was measured with the nearest


def test_fit_scores_each_patch_by_its_third_nearest_bank_patch():
    method = create_method("patchknn", image_size=48, coreset_ratio=1.0, fused_recipe="none", gaussian_weight=0.0)
    method.fit(images(2, seed=0))
    assert method.settings.few_shot_k == 3 and method.requested_settings.few_shot_k is None
    feats, _ = method.image_features(images(1, seed=1)[0])
    bank = method.bank_.banks["patches"]
    flat = feats.reshape(-1, feats.shape[-1]).float()
    distances = torch.cdist(flat, bank)  # lengths beside the directions: Euclidean
    third = distances.kthvalue(3, dim=1).values.view(feats.shape[:-1])
    torch.testing.assert_close(patch_anomalies(feats, bank, method.settings), third, atol=1e-4, rtol=1e-4)
    nearest = distances.min(dim=1).values.view(feats.shape[:-1])
    assert (third - nearest).min() >= 0 and (third - nearest).max() > 1e-3


def test_many_references_and_zero_shot_keep_the_nearest():
    many = create_method("patchknn", image_size=32, coreset_ratio=1.0, fused_recipe="none", augment="none")
    many.fit(images(FEW_REFERENCES + 1, seed=2, side=32))
    assert many.settings.few_shot_k == 1
    zero = create_method("patchknn", image_size=32).fit([])
    assert zero.settings.few_shot_k is None  # no bank: nothing to resolve


def test_a_saved_model_keeps_the_rank_it_was_fitted_with(tmp_path):
    def written(imgs: list[LoadedImage], folder: Path) -> list[Path]:
        folder.mkdir()
        for img in imgs:
            Image.fromarray(img.rgb).save(folder / img.path)
        return [folder / img.path for img in imgs]

    refs, queries = written(images(2, seed=3), tmp_path / "refs"), written(images(2, seed=4), tmp_path / "queries")
    fitted = Detector("patchknn", image_size=48, fused_recipe="none").fit(refs)
    fitted.save(tmp_path / "m")
    loaded = load_detector(tmp_path / "m")
    assert fitted.settings["few_shot_k"] == loaded.settings["few_shot_k"] == 3
    assert [r.score for r in fitted.predict(queries)] == [r.score for r in loaded.predict(queries)]
