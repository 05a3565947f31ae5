"""The ray engine's overlays (`--ray-overlays`) use the job's one colour scale, as `detect` does."""

from __future__ import annotations

import numpy as np
from PIL import Image

from anomalens.calibration import Threshold
from anomalens.colour_scale import ColourScale, colour_bar
from anomalens.engines.ray import ShardScorer
from anomalens.results import AnomalyResult


class _Det:
    threshold = Threshold.given(0.2)
    pixel_threshold = Threshold.given(0.1)


def test_ray_overlays_are_drawn_on_the_job_scale(tmp_path):
    scorer = object.__new__(ShardScorer)  # the writing part only: no Ray, no model
    scorer.options = {"write_maps": False, "write_overlays": True, "map_format": "npy"}
    scorer.detector, scorer.out = _Det(), tmp_path
    rgb = np.full((30, 40, 3), 90, np.uint8)
    files = []
    for i, top in enumerate((0.05, 0.5)):
        amap = np.full((30, 40), 0.05, np.float32)
        amap[:5, :5] = top
        files.append(scorer._write_files(AnomalyResult(str(tmp_path / f"i{i}.png"), top, amap), rgb))
    a, b = (np.asarray(Image.open(tmp_path / f["overlay"])) for f in files)
    bar = colour_bar(40, ColourScale.around(0.1))
    assert a.shape == b.shape == (30 + bar.shape[0], 40, 3)
    assert np.array_equal(a[20, 20], b[20, 20]) and np.array_equal(a[30:], bar)
