"""OutputWriter files, naming, overwrite/resume rules; overlay drawing helpers."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.outputs import CSV_COLUMNS, OutputWriter, output_name, read_records
from anomalens.overlay import (
    CONTOUR_COLOUR,
    colormap,
    heatmap_overlay,
    mask_contour,
    mask_image,
)
from anomalens.results import AnomalyResult

H, W = 24, 32


def _strict_json(line: str) -> dict:
    """Parse as standard JSON: NaN/Infinity are not allowed."""

    def reject(name: str) -> None:
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(line, parse_constant=reject)


def _result(path: str | Path, score: float = 0.8, with_mask: bool = True, seed: int = 0) -> AnomalyResult:
    rng = np.random.default_rng(seed)
    amap = rng.random((H, W)).astype(np.float32)
    mask = amap > 0.7 if with_mask else None
    return AnomalyResult(
        path=str(path),
        score=score,
        anomaly_map=amap,
        descriptions=[("scratch on surface", 0.31), ("dent", 0.2)],
        decision="NG" if with_mask else None,
        threshold=0.5 if with_mask else None,
        pixel_threshold=0.7 if with_mask else None,
        mask=mask,
        seconds=0.25,
    )


def _image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _jsonl_lines(out: Path) -> list[dict]:
    return [_strict_json(line) for line in (out / "results.jsonl").read_text().splitlines()]


def test_writes_every_file_with_right_content(tmp_path):
    out = tmp_path / "out"
    r = _result(tmp_path / "in" / "part_01.png")
    with OutputWriter(out) as w:
        rec = w.write(r, image=_image())
    name = output_name(r.path)
    assert rec["overlay"] == f"overlays/{name}.png"
    assert rec["mask"] == f"masks/{name}.png"
    assert rec["map"] == f"maps/{name}.npy"

    np.testing.assert_array_equal(np.load(out / rec["map"]), r.anomaly_map)
    assert np.load(out / rec["map"]).dtype == np.float32
    mask_png = np.asarray(Image.open(out / rec["mask"]))
    assert mask_png.dtype == np.uint8 and set(np.unique(mask_png)) <= {0, 255}
    np.testing.assert_array_equal(mask_png == 255, r.mask)
    overlay = Image.open(out / rec["overlay"])
    assert overlay.mode == "RGB" and overlay.size == (W, H)

    (line,) = _jsonl_lines(out)
    assert line == {
        **r.to_record(),
        "resolved_path": os.path.realpath(r.path),
        "overlay": rec["overlay"],
        "mask": rec["mask"],
        "map": rec["map"],
        "status": "ok",
        "error": None,
    }
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == CSV_COLUMNS
    assert rows[1] == [r.path, str(r.score), "NG", "0.5", "scratch on surface", "0.25", "ok", ""]
    # No temporary files are left behind by the atomic writes.
    assert not [p for p in out.rglob(".*tmp*")]


def test_tiff_maps_round_trip_float32(tmp_path):
    r = _result(tmp_path / "a.png")
    r.anomaly_map = r.anomaly_map * 1e3 - 17.25  # arbitrary range, negative values
    with OutputWriter(tmp_path / "out", map_format="tiff") as w:
        rec = w.write(r, image=_image())
    assert rec["map"].endswith(".tiff")
    img = Image.open(tmp_path / "out" / rec["map"])
    assert img.mode == "F"
    back = np.asarray(img)
    assert back.dtype == np.float32
    np.testing.assert_array_equal(back, r.anomaly_map.astype(np.float32))


def test_bad_map_format_rejected(tmp_path):
    with pytest.raises(ValueError, match="map_format"):
        OutputWriter(tmp_path, map_format="png")


def test_no_mask_and_disabled_outputs(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out, write_overlays=False) as w:
        rec = w.write(_result(tmp_path / "a.png", with_mask=False))  # no image needed without overlays
        rec2 = w.write(_result(tmp_path / "b.png"), image=_image())
    assert rec["mask"] is None and rec["overlay"] is None and (out / rec["map"]).exists()
    assert rec2["mask"] is not None and rec2["overlay"] is None
    assert not list((out / "overlays").iterdir())
    with OutputWriter(tmp_path / "out2", write_masks=False) as w:
        rec = w.write(_result(tmp_path / "c.png"), image=_image())
    assert rec["mask"] is None and not list((tmp_path / "out2" / "masks").iterdir())


def test_image_is_loaded_from_path_when_not_given(tmp_path):
    src = tmp_path / "in.png"
    Image.fromarray(_image(3)).save(src)
    with OutputWriter(tmp_path / "out") as w:
        rec = w.write(_result(src))
    assert Image.open(tmp_path / "out" / rec["overlay"]).size == (W, H)


def test_same_file_name_in_different_folders_gets_unique_names(tmp_path):
    a, b = tmp_path / "line1" / "img.png", tmp_path / "line2" / "img.png"
    assert output_name(a) != output_name(b)
    assert output_name(a) == output_name(a) and output_name(a).startswith("img-")
    assert "/" not in output_name(tmp_path / "we ird:na*me.png")
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        ra, rb = w.write(_result(a, seed=1), image=_image()), w.write(_result(b, seed=2), image=_image())
    assert len({ra["map"], rb["map"]}) == 2
    assert len(list((out / "maps").iterdir())) == 2
    np.testing.assert_array_equal(np.load(out / rb["map"]), _result(b, seed=2).anomaly_map)


def test_existing_results_are_not_overwritten_without_flag(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        rec = w.write(_result(tmp_path / "a.png"), image=_image())
    with pytest.raises(FileExistsError, match=str(out)):
        OutputWriter(out, resume=False)
    # Resuming does not let the same input be written twice either.
    with OutputWriter(out) as w, pytest.raises(FileExistsError, match=r"a\.png"):
        w.write(_result(tmp_path / "a.png", seed=5), image=_image())
    np.testing.assert_array_equal(np.load(out / rec["map"]), _result(tmp_path / "a.png").anomaly_map)


def test_overwrite_clears_previous_results(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        old = w.write(_result(tmp_path / "a.png"), image=_image())
        w.write_settings({"method": "fade"})
    (out / "report.html").write_text("old")
    (out / "notes.txt").write_text("user file")  # not ours: must survive
    with OutputWriter(out, overwrite=True) as w:
        assert w.done_paths() == set()
        assert not (out / old["map"]).exists() and not (out / old["overlay"]).exists()
        assert not (out / "report.html").exists() and not (out / "settings.json").exists()
        w.write(_result(tmp_path / "a.png", seed=9), image=_image())
    assert len(_jsonl_lines(out)) == 1
    assert (out / "notes.txt").read_text() == "user file"


def test_resume_after_interruption_with_truncated_last_line(tmp_path):
    out = tmp_path / "out"
    w = OutputWriter(out)
    w.write(_result(tmp_path / "a.png"), image=_image())
    w.write(_result(tmp_path / "b.png", score=0.1), image=_image())
    w.record_failure(tmp_path / "c.png", "cannot identify image file")
    # Simulate a kill: no close(), and a half-written line at the end of the file.
    with open(out / "results.jsonl", "a") as f:
        f.write('{"path": "' + str(tmp_path / "d.png") + '", "score": 0.')
    w._lock.close()  # the OS releases a killed process's lock on --out
    assert {r["path"] for r in read_records(out)} == {str(tmp_path / p) for p in ("a.png", "b.png", "c.png")}

    with OutputWriter(out) as w2:
        assert w2.done_paths() == {str(tmp_path / p) for p in ("a.png", "b.png", "c.png")}
        w2.write(_result(tmp_path / "d.png"), image=_image())
        assert [r["status"] for r in w2.records()] == ["ok", "ok", "error", "ok"]
    w.close()
    lines = _jsonl_lines(out)  # every line parses: the broken tail was cut before appending
    assert [Path(r["path"]).name for r in lines] == ["a.png", "b.png", "c.png", "d.png"]
    assert lines[2]["status"] == "error" and lines[2]["error"] == "cannot identify image file"
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [Path(r["path"]).name for r in rows] == ["a.png", "b.png", "c.png", "d.png"]
    assert rows[2]["status"] == "error" and rows[2]["error"] == "cannot identify image file"


def test_retrying_a_failure_replaces_it(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        w.record_failure(tmp_path / "a.png", "disk hiccup")
        w.write(_result(tmp_path / "a.png"), image=_image())
        assert [r["status"] for r in w.records()] == ["ok"]
    assert [r["status"] for r in read_records(out)] == ["ok"]


def test_nan_score_is_written_as_standard_json(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        w.write(_result(tmp_path / "a.png", score=float("nan")), image=_image())
    assert _jsonl_lines(out)[0]["score"] is None


def test_settings_kept_when_different(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        w.write_settings({"method": "fade", "threshold": 0.5, "path": Path("/x")})
        w.write_settings({"method": "fade", "threshold": 0.5, "path": Path("/x")})  # same: no copy
        assert not (out / "settings.1.json").exists()
        w.write_settings({"method": "winclip"})
        w.write_settings({"method": "filo"})
    assert json.loads((out / "settings.json").read_text()) == {"method": "filo"}
    assert json.loads((out / "settings.1.json").read_text()) == {
        "method": "fade",
        "threshold": 0.5,
        "path": "/x",
    }
    assert json.loads((out / "settings.2.json").read_text()) == {"method": "winclip"}


# -- overlay helpers --------------------------------------------------------------------------


def test_colormap_endpoints_and_clipping():
    c = colormap(np.array([-1.0, 0.0, 1.0, 2.0, np.nan]))
    assert c.dtype == np.uint8 and c.shape == (5, 3)
    np.testing.assert_array_equal(c[0], c[1])
    np.testing.assert_array_equal(c[2], c[3])
    np.testing.assert_array_equal(c[4], c[1])
    assert c[1].sum() < 150 and c[2][0] > c[2][2]  # dark blue-ish low end, red-ish high end


def test_heatmap_overlay_blends_and_draws_contour():
    img = np.full((H, W, 3), 128, np.uint8)
    amap = np.zeros((H, W), np.float32)
    amap[5:15, 8:20] = 1.0
    assert np.array_equal(heatmap_overlay(img, amap, alpha=0.0), img)
    pure = heatmap_overlay(img, amap, alpha=1.0, vmin=0, vmax=1)
    np.testing.assert_array_equal(pure[10, 12], colormap(np.array(1.0)))
    np.testing.assert_array_equal(pure[0, 0], colormap(np.array(0.0)))

    mask = amap > 0.5
    out = heatmap_overlay(img, amap, mask=mask, vmin=0, vmax=1)
    assert out.shape == (H, W, 3) and out.dtype == np.uint8
    contour = mask_contour(mask, 2)
    assert contour[5, 12] and contour[6, 12] and not contour[7, 12] and not contour[10, 14]
    assert (out[contour] == CONTOUR_COLOUR).all()
    assert not (out[10, 14] == CONTOUR_COLOUR).all()  # the inside stays a heatmap


def test_heatmap_overlay_resizes_map_and_accepts_grey():
    grey = np.full((H, W), 50, np.uint8)
    small = np.random.default_rng(0).random((6, 8)).astype(np.float32)
    out = heatmap_overlay(grey, small, mask=small > 0.5)
    assert out.shape == (H, W, 3)
    assert heatmap_overlay(grey, np.ones((H, W), np.float32)).shape == (H, W, 3)  # constant map
    with pytest.raises(ValueError):
        heatmap_overlay(grey.astype(np.float32), small)


def test_mask_image():
    m = mask_image(np.array([[True, False]]))
    assert m.dtype == np.uint8 and m.tolist() == [[255, 0]]


def test_one_bad_line_in_the_middle_loses_no_later_record(tmp_path):
    out = tmp_path / "out"
    with OutputWriter(out) as w:
        for i in range(6):
            w.write(_result(tmp_path / f"{i}.png", seed=i), image=_image())
    jsonl = out / "results.jsonl"
    lines = jsonl.read_text().splitlines(keepends=True)
    lines.insert(2, "this is not json\n")  # line 3
    lines.insert(5, '["a list, not a record"]\n')  # line 6
    original = "".join(lines)
    jsonl.write_text(original)

    assert len(read_records(out)) == 6  # reading keeps every valid line
    with OutputWriter(out) as w2:
        assert w2.bad_lines == [3, 6]
        assert len(w2.done_paths()) == 6
        assert w2.backup is not None and w2.backup.read_text() == original  # the user's file, as it was
        w2.write(_result(tmp_path / "6.png"), image=_image())
    names = [Path(r["path"]).name for r in _jsonl_lines(out)]
    assert names == [f"{i}.png" for i in range(7)]
    # A second recovery never overwrites the first backup.
    with open(jsonl, "a") as f:
        f.write("broken\n")
    with OutputWriter(out) as w3:
        assert w3.backup != w2.backup and w2.backup.read_text() == original


def test_run_reports_bad_lines(tmp_path):
    import numpy as np
    from PIL import Image

    from anomalens import Detector
    from anomalens.inspection import run

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        Image.fromarray(np.full((32, 32, 3), 60 * i, np.uint8)).save(src / f"{i}.png")
    det = Detector(method="patchknn", image_size=64)
    det.fit([])
    out = tmp_path / "out"
    run(det, [src], out)
    with open(out / "results.jsonl", "a") as f:
        f.write("{oops}\n")
    messages: list[str] = []
    run(det, [src], out, log=messages.append)
    warning = next(m for m in messages if "not valid records" in m)
    assert "line 4" in warning and "results.jsonl.bak" in warning
    assert len(read_records(out)) == 3
