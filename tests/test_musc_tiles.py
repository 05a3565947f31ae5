"""`musc` with tiles for elongated images (`tile_above_aspect`): a partner image is all its tiles
(hand computation and brute force), a defect on an elongated image is found where it is, square
images are unchanged, batch order, references saved with tiles and references saved before."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from synthetic import smooth_texture

from anomalens import Detector, load_detector
from anomalens.images import LoadedImage
from anomalens.methods.musc.msm import interval_average, mutual_scores, nearest_patch_distances, nearest_per_group

pytestmark = pytest.mark.usefixtures("one_torch_thread")

FAST = {"image_size": 64, "progress": False}


def test_nearest_per_group_by_hand():
    distances = torch.tensor([[4.0, 1.0, 3.0, 5.0, 2.0], [0.5, 6.0, 7.0, 0.25, 9.0]])
    groups = torch.tensor([0, 0, 1, 1, 2])
    got = nearest_per_group(distances, groups)
    assert got.tolist() == [[1.0, 3.0, 2.0], [0.5, 0.25, 9.0]]


def test_grouped_mutual_scores_equal_partners_made_of_all_their_tiles():
    g = torch.Generator().manual_seed(0)
    # 3 images: image 0 has tiles 0, 1; image 1 tile 2; image 2 tiles 3, 4 (8 patches of 5 channels each)
    rows = F.normalize(torch.randn(5, 8, 5, generator=g), dim=-1)
    owner = [0, 0, 1, 2, 2]
    known = F.normalize(torch.randn(3, 8, 5, generator=g), dim=-1)  # references: image 0 two tiles, image 1 one
    known_owner = [0, 0, 1]
    image_partners = {0: [1, 2], 1: [0, 2], 2: [0, 1]}
    partners, groups = [], []
    for i in owner:
        partners.append([t for j in image_partners[i] for t in range(5) if owner[t] == j])
        groups.append([image_partners[i].index(owner[t]) for t in partners[-1]])
    got = mutual_scores(rows, partners, known, (0.0, 1.0), groups=groups, known_groups=known_owner)
    for t, i in enumerate(owner):
        images = [rows[[u for u in range(5) if owner[u] == j]].reshape(-1, 5) for j in image_partners[i]]
        images += [known[[u for u in range(3) if known_owner[u] == r]].reshape(-1, 5) for r in (0, 1)]
        per_image = torch.stack([nearest_patch_distances(rows[t], im[None])[:, 0] for im in images], dim=1)
        torch.testing.assert_close(got[t], interval_average(per_image, (0.0, 1.0)))


def _texture(seed: int, h: int, w: int) -> np.ndarray:
    return smooth_texture(seed, h, w, cell=8)


def _elongated(n: int = 6, defect: int | None = 2) -> list[LoadedImage]:
    images = []
    for i in range(n):
        rgb = _texture(i, 64, 256)  # 4 : 1
        if i == defect:
            rgb[26:38, 200:212] = (255, 0, 0)  # near the right end
        images.append(LoadedImage(path=f"long{i}.png", rgb=rgb))
    return images


def test_a_defect_on_an_elongated_image_is_found_where_it_is():
    det = Detector("musc", tile_above_aspect=2.0, **FAST).fit([])
    out = det.predict(_elongated())
    scores = [o.score for o in out]
    assert int(np.argmax(scores)) == 2
    m = out[2].anomaly_map
    assert m.shape == (64, 256)  # the tiles' maps assembled at the image's size
    y, x = np.unravel_index(int(np.argmax(m)), m.shape)
    assert 20 <= y <= 44 and 185 <= x <= 227
    features = det.method.features(_elongated(2, None))
    assert len(features.owners()) > 2 and features.num_images == 2  # each image became several tiles


def test_square_images_are_scored_as_before():
    images = [LoadedImage(path=f"sq{i}.png", rgb=_texture(i, 64, 64)) for i in range(5)]
    plain = Detector("musc", **FAST).fit([]).predict(images)
    tiled = Detector("musc", tile_above_aspect=2.0, **FAST).fit([]).predict(images)
    for a, b in zip(plain, tiled):
        assert a.score == b.score
        assert np.array_equal(a.anomaly_map, b.anomaly_map)


def test_the_order_of_a_tiled_batch_does_not_change_scores():
    images = _elongated() + [LoadedImage(path="sq.png", rgb=_texture(9, 64, 64))]
    det = Detector("musc", tile_above_aspect=2.0, **FAST).fit([])
    forward = {o.path: o.score for o in det.predict(images)}
    backward = {o.path: o.score for o in det.predict(images[::-1])}
    for path, score in forward.items():
        assert backward[path] == pytest.approx(score, abs=1e-6)


def test_tiled_references_are_saved_and_references_saved_before_tiles_load(tmp_path):
    refs, queries = _elongated(3, None), _elongated(4, 1)
    det = Detector("musc", tile_above_aspect=2.0, **FAST).fit(refs)
    assert det.method.references.num_images == 3 and len(det.method.references.owners()) > 3
    expected = det.predict(queries)
    det.save(tmp_path / "m")
    again = load_detector(tmp_path / "m")
    assert again.method.num_references == 3
    for a, b in zip(expected, again.predict(queries)):
        assert b.score == pytest.approx(a.score, abs=1e-6)
    # a model saved before tiles has one row per reference and no owner
    square = Detector("musc", **FAST).fit([LoadedImage(path=f"r{i}.png", rgb=_texture(i, 64, 64)) for i in range(3)])
    state = square.method.state_dict()
    del state["ref.owner"]
    fresh = Detector("musc", **FAST)
    fresh.method.load_state_dict(state)
    assert fresh.method.num_references == 3 and fresh.method.references.owners() == [0, 1, 2]
