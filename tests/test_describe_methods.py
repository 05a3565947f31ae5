"""The `defects` setting that `--describe` fills: each text method uses the phrases for its category only."""

from __future__ import annotations

import pytest
import torch

from anomalens.methods import create_method
from anomalens.text import TEMPLATES, defect_prompts

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DEFECTS = ("worn ball track", "pitted nut")


def test_defect_prompts():
    prompts = defect_prompts("ball screw", [*DEFECTS, "  pitted   nut ", ""])
    assert len(prompts) == 2 * len(TEMPLATES)
    assert defect_prompts("nut", ["dent"], period=False)[0] == TEMPLATES[0].removesuffix(".").format("nut with dent")
    assert "a photo of a ball screw with worn ball track." in prompts
    assert "a close-up photo of the ball screw with pitted nut." in prompts


def test_winclip_adds_the_defects_for_its_category_only():
    torch.manual_seed(0)
    plain = create_method("winclip", backbone="test-tiny", image_size=48, weights="random", category="ball_screw")
    m = create_method(
        "winclip", backbone="test-tiny", image_size=48, weights="random", category="ball_screw", defects=list(DEFECTS)
    )
    assert m.settings.defects == DEFECTS  # JSON lists become the dataclass tuple
    assert m.anomalous_prompts == [*plain.anomalous_prompts, *defect_prompts("ball screw", DEFECTS)]
    assert m.normal_prompts == plain.normal_prompts
    m.set_category("bottle")  # the benchmark switching category: the phrases are not for it
    assert not any("with worn ball track" in p for p in m.anomalous_prompts)


def test_fade_adds_the_defects_to_the_classification_prompts():
    from anomalens.methods.fade import Fade, FadeSettings
    from anomalens.text.features import TextFeatureCache

    tiny = {"backbone": "test-tiny", "classification_size": 32, "segmentation_sizes": (32,), "category": "ball screw"}
    torch.manual_seed(0)
    plain = Fade(FadeSettings(**tiny), text_cache=TextFeatureCache(cache_dir=None)).text_features()
    torch.manual_seed(0)
    cache = TextFeatureCache(cache_dir=None)
    fade = Fade(FadeSettings(**tiny, defects=DEFECTS), text_cache=cache)
    with_defects = fade.text_features()
    added = defect_prompts("ball screw", DEFECTS, period=fade._template == "{}")  # as its WinCLIP prompts
    assert set(added) <= set(with_defects.descriptions) and not set(added) & set(plain.descriptions)
    assert torch.equal(with_defects.class_normal, plain.class_normal)
    assert not torch.allclose(with_defects.class_anomalous, plain.class_anomalous)
    assert torch.equal(with_defects.seg_anomalous, plain.seg_anomalous)  # segmentation stays object-agnostic


def test_filo_uses_the_defects_instead_of_the_vocabulary():
    m = create_method("filo", backbone="test-tiny-24", image_size=28, category="ball screw drive", defects=DEFECTS)
    assert m._descriptions() == list(DEFECTS)
    m.set_category("bottle")
    assert m._descriptions() == m.vocabulary.for_category("bottle")
