"""Named patchknn recipes (`KNN_RECIPES`): the `--config` presets of the same names set the same
settings, and musc's `knn_recipe` runs its patchknn share (pseudo-references, references) with them."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from synthetic import planted_batch

from anomalens import Detector, load_detector
from anomalens.cli.config import PRESETS
from anomalens.images import LoadedImage
from anomalens.methods import create_method
from anomalens.methods.musc.pseudo_references import musc_references_knn_settings, pseudo_reference_settings
from anomalens.methods.patchknn import PatchKnn
from anomalens.methods.patchknn_settings import KNN_RECIPES, PatchKnnSettings
from anomalens.settings import SettingsError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"image_size": 64, "progress": False}


def _images(seeds, defect: int | None = None) -> list[LoadedImage]:
    return planted_batch(seeds, defect=defect)


@pytest.mark.parametrize("name", [n for n in KNN_RECIPES if n != "default"])
def test_each_recipe_is_the_preset_of_its_name(name):
    preset = yaml.safe_load((PRESETS / f"{name}.yaml").read_text())
    assert preset["method"] == "patchknn"
    as_preset = PatchKnnSettings(**preset["set"])
    as_recipe = PatchKnnSettings(**KNN_RECIPES[name])
    assert as_preset == as_recipe


def test_musc_share_settings_are_the_recipe_on_musc_patchknn():
    plain = musc_references_knn_settings()
    assert plain.gaussian_weight == 0.0 and not plain.magnitudes
    textured = musc_references_knn_settings("textured-surface")
    assert textured.magnitudes and textured.blocks == (4, 10, 14) and textured.gaussian_weight == 0.0
    assert pseudo_reference_settings("large-defects").coarse_weight == 2.0
    assert pseudo_reference_settings("large-defects").augment == "none"
    with pytest.raises(SettingsError, match="knn_recipe"):
        create_method("musc", **FAST, knn_recipe="glossy")


def test_musc_with_a_recipe_mixes_in_patchknn_with_that_recipe():
    images = _images(range(16), defect=5)
    method = create_method("musc", **FAST, knn_recipe="textured-surface").fit([])
    outputs = method.predict(images)
    chosen = method.last_batch["pseudo_references"]
    mutual = create_method("musc", **FAST, pseudo_reference_share=0.0).fit([]).predict(images)
    by_path = {img.path: img for img in images}
    knn = PatchKnn(pseudo_reference_settings("textured-surface")).fit([by_path[p] for p in chosen])
    plain = PatchKnn(pseudo_reference_settings()).fit([by_path[p] for p in chosen])
    differs = 0.0
    for img, out, m in zip(images, outputs, mutual, strict=True):
        if img.path in chosen:
            continue
        k = knn.predict([img])[0]
        assert out.score == pytest.approx(0.625 * m.score + 0.375 * k.score, abs=1e-5)
        np.testing.assert_allclose(out.anomaly_map, 0.625 * m.anomaly_map + 0.375 * k.anomaly_map, atol=1e-5)
        differs = max(differs, abs(k.score - plain.predict([img])[0].score))
    assert differs > 1e-3  # the recipe changes patchknn's opinion: the test would notice it being ignored


def test_musc_with_references_fits_its_patchknn_with_the_recipe():
    method = create_method("musc", **FAST, knn_recipe="textured-surface").fit(_images([40, 41]))
    assert method.reference_knn_.settings.magnitudes
    assert method.reference_knn_.settings.blocks == (4, 10, 14)


def test_a_saved_musc_model_keeps_its_recipe(tmp_path):
    refs, queries = _images([40, 41]), _images([1, 2], defect=0)
    det = Detector("musc", **FAST, knn_recipe="textured-surface").fit(refs)
    expected = det.predict(queries)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method.settings.knn_recipe == "textured-surface"
    assert again.method.reference_knn_.settings.magnitudes
    for a, b in zip(expected, again.predict(queries), strict=True):
        assert a.score == pytest.approx(b.score, abs=1e-6)
        np.testing.assert_allclose(a.anomaly_map, b.anomaly_map, atol=1e-6)
