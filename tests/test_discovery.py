"""Image discovery never reads anomalens' own outputs (issue 12, item 8)."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from anomalens import Detector
from anomalens.images import OUTPUT_MARKER, list_images
from anomalens.inspection import run


def _tiles(folder, n, value=100):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((32, 32, 3), value + i, np.uint8)).save(folder / f"good{i}.png")


def test_out_inside_refs_does_not_become_references(tmp_path):
    refs = tmp_path / "refs"
    _tiles(refs, 4)
    det = Detector(method="patchknn", image_size=64).fit([refs])
    assert len(det.reference_paths) == 4
    run(det, [refs], refs / "out")  # overlays, masks and maps written inside the reference folder
    assert (refs / "out" / OUTPUT_MARKER).exists()
    assert any((refs / "out" / "overlays").iterdir())
    again = Detector(method="patchknn", image_size=64).fit([refs])
    assert len(again.reference_paths) == 4
    assert len(list_images([refs])) == 4


def test_marker_prunes_nested_folders_but_explicit_files_are_kept(tmp_path):
    _tiles(tmp_path / "a", 2)
    _tiles(tmp_path / "a" / "old_run" / "overlays", 3)
    (tmp_path / "a" / "old_run" / OUTPUT_MARKER).write_text("")
    assert [p.name for p in list_images([tmp_path / "a"])] == ["good0.png", "good1.png"]
    explicit = tmp_path / "a" / "old_run" / "overlays" / "good0.png"
    assert list_images([explicit]) == [explicit]


@pytest.mark.skipif(not hasattr(os, "symlink"), reason="no symlinks")
def test_symlink_loop_does_not_hang(tmp_path):
    _tiles(tmp_path / "a", 1)
    os.symlink(tmp_path / "a", tmp_path / "a" / "loop")
    assert [p.name for p in list_images([tmp_path / "a"])] == ["good0.png"]
