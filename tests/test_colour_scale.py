"""Overlays on one colour scale per run, anchored to the threshold: same value, same colour."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from anomalens import Detector
from anomalens.colour_scale import ColourScale, colour_bar, hue_family, scale_for_run, with_colour_bar
from anomalens.outputs import OutputWriter
from anomalens.overlay import heatmap_overlay
from anomalens.results import AnomalyResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_same_value_same_colour_across_images_of_different_ranges():
    grey = np.full((20, 30, 3), 128, np.uint8)
    clean = np.linspace(0.0, 0.12, 600, dtype=np.float32).reshape(20, 30)  # a good part: max 0.12
    holed = np.linspace(0.0, 0.30, 600, dtype=np.float32).reshape(20, 30)  # a hole: max 0.30
    clean[5, 5] = holed[5, 5] = 0.12
    scale = ColourScale.around(0.2)
    a = heatmap_overlay(grey, clean, scale=scale)
    b = heatmap_overlay(grey, holed, scale=scale)
    assert np.array_equal(a[5, 5], b[5, 5])
    # Each image's maximum: the clean part's stays cool, the hole's is hot.
    assert hue_family(scale.colours(np.float32(0.12))) == "cool"
    assert hue_family(scale.colours(np.float32(0.30))) == "hot"
    # The old per-image scaling painted both maxima with the same (hottest) colour.
    old_a, old_b = heatmap_overlay(grey, clean, alpha=1.0), heatmap_overlay(grey, holed, alpha=1.0)
    assert np.array_equal(old_a[-1, -1], old_b[-1, -1])
    assert not np.array_equal(
        heatmap_overlay(grey, clean, alpha=1.0, scale=scale)[-1, -1],
        heatmap_overlay(grey, holed, alpha=1.0, scale=scale)[-1, -1],
    )


@pytest.mark.parametrize("anchor", [0.2, 3.5, 0.0, -1.0])
def test_below_the_threshold_is_cool_and_above_is_hot(anchor):
    scale = ColourScale.around(anchor)
    below = np.linspace(scale.low - 1.0, anchor, 200)  # the threshold itself is not above it
    above = np.linspace(anchor, scale.high + 1.0, 201)[1:]
    assert {hue_family(c) for c in scale.colours(below)} == {"cool"}
    assert {hue_family(c) for c in scale.colours(above)} == {"hot"}
    # Darker the further below, hotter (redder, less green) the further above.
    cool = scale.colours(np.linspace(scale.low, anchor, 5)).astype(int)
    assert (np.diff(cool.sum(axis=1)) > 0).all()
    hot = scale.colours(np.linspace(anchor + 1e-9, scale.high, 5)).astype(int)
    assert (np.diff(hot[:, 1]) < 0).all()
    assert hue_family(scale.colours(np.float32(np.nan))) == "hot"  # unscorable counts as worst


def test_scale_positions_by_hand():
    scale = ColourScale(0.0, 0.4, 1.0)
    pos = scale.position(np.array([-1.0, 0.0, 0.2, 0.4, 0.7, 1.0, 5.0]))
    assert pos[[0, 1, 2, 3]] == pytest.approx([0.0, 0.0, 0.25, 0.5])
    assert pos[[4, 5, 6]] == pytest.approx([0.75, 1.0, 1.0])
    with pytest.raises(ValueError):
        ColourScale(0.0, 1.0, 1.0)


def test_colour_bar_is_appended_with_the_threshold_marked():
    scale = ColourScale.around(0.3)
    overlay = np.zeros((50, 200, 3), np.uint8)
    out = with_colour_bar(overlay, scale)
    bar = colour_bar(200, scale)
    assert out.shape == (50 + bar.shape[0], 200, 3) and np.array_equal(out[50:], bar)
    ramp_row = bar[2]
    assert hue_family(ramp_row[10]) == "cool" and hue_family(ramp_row[190]) == "hot"
    assert (bar[:6, 99] == 0).all()  # the black threshold line in the middle
    below = bar[8:]  # under the ramp: the values low / threshold / high, written in black
    assert (below[:, :20] < 128).any() and (below[:, 90:110] < 128).any() and (below[:, 180:] < 128).any()
    assert colour_bar(40, scale).shape[1] == 40  # narrow images: the ramp alone


def test_output_writer_draws_every_overlay_on_the_run_scale(tmp_path):
    scale = ColourScale.around(0.2)
    img = np.full((24, 32, 3), 100, np.uint8)
    with OutputWriter(tmp_path / "out", overlay_scale=scale) as writer:
        recs = []
        for i, top in enumerate((0.12, 0.30)):
            amap = np.full((24, 32), 0.05, np.float32)
            amap[:4, :4] = top
            recs.append(writer.write(AnomalyResult(str(tmp_path / f"p{i}.png"), top, amap), image=img))
    a, b = (np.asarray(Image.open(tmp_path / "out" / r["overlay"])) for r in recs)
    assert a.shape == b.shape == (24 + colour_bar(32, scale).shape[0], 32, 3)
    assert np.array_equal(a[10, 10], b[10, 10])  # 0.05 in both: the same colour
    assert np.array_equal(a[24:], b[24:])  # the same scale drawn under both


def _tiles(folder, n):
    folder.mkdir()
    rng = np.random.default_rng(len(str(folder)))
    for i in range(n):
        Image.fromarray(rng.integers(90, 160, (32, 32, 3), dtype=np.uint8)).save(folder / f"t{i}.png")


def test_scale_for_run_threshold_references_or_fixed(tmp_path):
    _tiles(tmp_path / "refs", 3)
    det = Detector(method="patchknn", image_size=64).fit([tmp_path / "refs"])
    no_threshold = scale_for_run(det)
    assert no_threshold.low == 0.0 and no_threshold.anchor > 0 and "leave-one-out" in no_threshold.basis
    assert no_threshold == scale_for_run(det)  # fixed: the same for every run of this detector
    det.threshold = 0.4
    assert (scale_for_run(det).low, scale_for_run(det).anchor, scale_for_run(det).high) == (0.0, 0.4, 0.8)
    det.pixel_threshold = 0.3  # the mask's threshold is the boundary of the overlay's colours
    assert scale_for_run(det).anchor == 0.3 and "pixel threshold" in scale_for_run(det).basis
    zero_shot = Detector(method="patchknn", image_size=64)
    zero_shot.threshold = None
    fixed = scale_for_run(zero_shot)
    assert (fixed.low, fixed.anchor, fixed.high) == (0.0, 0.5, 1.0) and "fixed" in fixed.basis
