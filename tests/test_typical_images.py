"""References from an unlabeled folder (`anomalens.typical_images`, `anomalens fit --unlabeled`)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from PIL import Image

from anomalens.detector import Detector
from anomalens.typical_images import choose_typical_images, typical_count

pytestmark = pytest.mark.usefixtures("one_torch_thread")

MUSC_FAST = {"image_size": 64, "progress": False}


def texture(seed: int, defect: bool = False) -> np.ndarray:
    """One striped texture with per-image noise; `defect` paints a dark square."""
    yy, xx = np.mgrid[0:64, 0:64]
    base = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = np.clip(base[:, :, None] + np.random.default_rng(seed).normal(0, 6, (64, 64, 3)), 0, 255)
    if defect:
        img[20:34, 30:44] = (20, 15, 10)
    return img.astype(np.uint8)


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """16 good images and 4 with a defect, unlabeled in one folder."""
    root = tmp_path_factory.mktemp("unlabeled")
    for i in range(16):
        Image.fromarray(texture(i)).save(root / f"part_{i:02d}.png")
    for i in range(4):
        Image.fromarray(texture(100 + i, defect=True)).save(root / f"part_{20 + i:02d}.png")
    return root


def test_typical_count_rounds_half_up_and_keeps_the_minimum():
    assert typical_count(0.1, 2, 114) == 11
    assert typical_count(0.1, 2, 15) == 2  # 1.5 rounds up
    assert typical_count(0.1, 2, 4) == 2  # 0.4 rounds to 0: the minimum
    assert typical_count(0.25, 2, 20) == 5


def test_the_most_typical_images_are_good_and_the_order_does_not_matter(folder):
    chosen = choose_typical_images([folder], share=0.25, **MUSC_FAST)
    assert len(chosen.chosen) == 5 and len(chosen.mutual_scores) == 20
    assert all(int(Path(p).stem.split("_")[1]) < 16 for p in chosen.chosen)  # no defective image
    defective = [s for p, s in chosen.mutual_scores.items() if int(Path(p).stem.split("_")[1]) >= 16]
    assert min(defective) > max(chosen.mutual_scores[p] for p in chosen.chosen)
    files = sorted(folder.glob("*.png"))
    shuffled = [files[i] for i in np.random.default_rng(0).permutation(len(files))]
    assert choose_typical_images(shuffled, share=0.25, **MUSC_FAST).chosen == chosen.chosen


def test_the_second_pick_is_musc_pseudo_references_and_one_round_the_lowest_mutual_scores(folder):
    files = sorted(folder.glob("*.png"))
    twice = choose_typical_images([folder], share=0.25, **MUSC_FAST)  # rounds 2, the default
    picks = {"pseudo_reference_share": 0.25, "pseudo_reference_minimum": 2, "pseudo_reference_rounds": 2}
    det = Detector("musc", **picks, **MUSC_FAST).fit([])
    det.predict([str(f) for f in files])  # musc itself, its outputs made
    assert twice.rounds == 2 and set(twice.chosen) == set(det.method.last_batch["pseudo_references"])
    assert list(twice.joined_scores.values()) == pytest.approx(det.method.last_ranking["picked_by"])
    joined = twice.joined_scores  # what the second pick ranked by: the chosen are its lowest, most typical first
    assert twice.chosen == sorted(joined, key=lambda p: (joined[p], p))[:5]
    once = choose_typical_images([folder], share=0.25, rounds=1, **MUSC_FAST)
    assert once.rounds == 1 and once.joined_scores == {}
    # the mutual scores are what musc without pseudo-references outputs
    alone = Detector("musc", pseudo_reference_share=0.0, **MUSC_FAST).fit([])
    assert once.mutual_scores == pytest.approx({r.path: r.score for r in alone.predict([str(f) for f in files])})
    assert twice.mutual_scores == pytest.approx(once.mutual_scores)  # both picks start from them
    assert once.chosen == sorted(once.mutual_scores, key=lambda p: (once.mutual_scores[p], p))[:5]
    with pytest.raises(ValueError, match="rounds must be at least 1"):
        choose_typical_images([folder], rounds=0, **MUSC_FAST)


def test_a_folder_too_small_for_musc_pick_is_ranked_by_the_mutual_score(folder, tmp_path):
    for f in sorted(folder.glob("*.png"))[:6]:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    chosen = choose_typical_images([tmp_path], share=0.1, **MUSC_FAST)  # 0.6 images: the minimum, 2
    assert chosen.rounds == 1 and len(chosen.chosen) == 2
    assert chosen.chosen == sorted(chosen.mutual_scores, key=lambda p: (chosen.mutual_scores[p], p))[:2]


def test_a_corrupt_file_is_reported_and_the_rest_is_ranked(folder, tmp_path):
    for f in folder.glob("*.png"):
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "part_99.png").write_bytes(b"not a png")
    seen: list[str] = []
    chosen = choose_typical_images([tmp_path], share=0.25, log=seen.append, **MUSC_FAST)
    assert [Path(e.path).name for e in chosen.failed] == ["part_99.png"]
    assert len(chosen.mutual_scores) == 20 and any("part_99.png" in line for line in seen)


def test_too_few_images_is_a_clear_error(folder, tmp_path):
    for f in sorted(folder.glob("*.png"))[:2]:
        (tmp_path / f.name).write_bytes(f.read_bytes())
    with pytest.raises(ValueError, match="2 readable images cannot give 2 typical ones"):
        choose_typical_images([tmp_path], share=0.1, **MUSC_FAST)
    with pytest.raises(ValueError, match="between 0 and 1"):
        choose_typical_images([folder], share=1.0, **MUSC_FAST)


def test_fit_unlabeled_saves_a_model_on_the_typical_images(folder, tmp_path):
    model = tmp_path / "model"
    res = run(
        [
            "fit",
            "--unlabeled",
            folder,
            "--out",
            model,
            "--image-size",
            "128",
            "--typical-share",
            "0.25",
            "--no-progress",
        ]
    )
    assert "5 of 20 images" in res.output and "threshold: none" in res.output
    record = json.loads((model / "typical_images.json").read_text())
    saved = json.loads((model / "detector.json").read_text())
    assert record["considered"] == 20 and len(record["chosen"]) == 5
    assert saved["references"] == record["chosen"] and saved["threshold"] is None
    scored = run(["detect", folder, "--model", model, "--out", tmp_path / "out"])
    assert "scored 20 images" in scored.output


def test_fit_unlabeled_refuses_what_it_cannot_do(folder, tmp_path):
    res = run(["fit", "--unlabeled", folder, "--out", tmp_path / "m", "--threshold", "auto"], code=2)
    assert "cannot be calibrated with --unlabeled" in res.output
    res = run(["fit", "--unlabeled", folder, "--refs", folder, "--out", tmp_path / "m"], code=2)
    assert "cannot be combined" in res.output
    res = run(["fit", "--refs", folder, "--typical-share", "0.2", "--out", tmp_path / "m"], code=2)
    assert "--typical-share belongs to --unlabeled" in res.output
    res = run(["fit", "--unlabeled", tmp_path / "nowhere", "--out", tmp_path / "m"], code=2)
    assert "unlabeled folder does not exist" in res.output
    assert not (tmp_path / "m").exists()
