"""Thumbnails made by the output writer while it holds the pixels: the report uses them instead of
reading every file again, and they look like the ones made from the files; the overlay's
colour table stays within one level of the exact colour scale."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
from PIL import Image

from anomalens.colour_scale import ColourScale, hue_family
from anomalens.outputs import OutputWriter, record_key
from anomalens.overlay import scale_colours
from anomalens.report import write_report
from anomalens.report_thumbs import THUMB_SIDE, array_thumb_uri, mask_array_uri, mask_data_uri, thumb_data_uri
from anomalens.results import AnomalyResult


def _decode(uri: str) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), dtype=float)


def _write_one(tmp_path, thumbnails: int):
    h, w = 150, 260
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([xx % 256, yy % 256, (xx + yy) % 256], axis=-1).astype(np.uint8)
    src = tmp_path / "in.png"
    Image.fromarray(img).save(src)
    amap = (0.1 + 0.3 * np.exp(-((yy - 70) ** 2 + (xx - 120) ** 2) / 400.0)).astype(np.float32)
    result = AnomalyResult(path=str(src), score=0.4, anomaly_map=amap, mask=amap > 0.25, decision="NG")
    out = tmp_path / "out"
    with OutputWriter(out, overlay_scale=ColourScale.around(0.2), thumbnails=thumbnails) as writer:
        record = writer.write(result, img)
    return out, record, writer.thumbs


def test_writer_thumbnails_match_those_made_from_the_files(tmp_path):
    out, record, thumbs = _write_one(tmp_path, THUMB_SIDE)
    made = thumbs[record_key(record)]
    for key, path in (("im", record["path"]), ("ov", out / record["overlay"])):
        from_file = thumb_data_uri(path)
        assert made[key][1:] == from_file[1:]  # same width and height
        assert np.abs(_decode(made[key][0]) - _decode(from_file[0])).mean() < 4  # same picture (JPEG)
    assert made["mk"] == mask_data_uri(out / record["mask"])  # 1-bit PNG: identical


def test_report_uses_the_writer_thumbnails_without_reading_the_files(tmp_path):
    out, record, thumbs = _write_one(tmp_path, THUMB_SIDE)
    (tmp_path / "in.png").unlink()  # the input and the overlay are gone: only the made thumbnails remain
    (out / record["overlay"]).unlink()
    html = write_report(out, [record], thumbs=thumbs).read_text()
    made = thumbs[record_key(record)]
    assert made["im"][0] in html and made["ov"][0] in html and made["mk"] in html
    without = write_report(out, [record]).read_text()  # no thumbnails given: files read, none found
    assert made["im"][0] not in without and not re.search(r'"ov":"data:', without)


def test_no_thumbnails_unless_asked(tmp_path):
    _, _, thumbs = _write_one(tmp_path, 0)
    assert thumbs == {}


def test_array_thumbnail_of_grey_and_large_images():
    uri, w, h = array_thumb_uri(np.full((1000, 500), 128, np.uint8))
    assert (w, h) == (THUMB_SIDE // 2, THUMB_SIDE) and uri.startswith("data:image/jpeg;base64,")


def test_overlay_colour_table_within_one_level_of_the_exact_scale():
    scale = ColourScale(0.1, 0.25, 0.6)
    edges = [0.25, np.nextafter(np.float32(0.25), np.float32(1)), np.nan, np.inf, -np.inf]
    values = np.concatenate([np.linspace(-0.2, 0.9, 100_001), edges]).astype(np.float32)
    exact, fast = scale.colours(values).astype(int), scale_colours(scale, values).astype(int)
    assert np.abs(exact - fast).max() <= 1
    # the threshold boundary is exact: at or below it cool, above it hot, NaN hot
    assert [hue_family(c) for c in fast[-5:]] == ["cool", "hot", "hot", "hot", "cool"]
    assert all(hue_family(a) == hue_family(b) for a, b in zip(exact, fast))


def test_an_empty_mask_thumbnail_is_the_one_made_from_its_file(tmp_path):
    # the writer reuses one thumbnail per size for clean parts; it must equal the file's
    for h, w in ((150, 260), (397, 262), (40, 1130)):
        empty = np.zeros((h, w), dtype=bool)
        path = tmp_path / f"empty_{h}x{w}.png"
        Image.fromarray(np.zeros((h, w), np.uint8)).save(path)
        assert mask_array_uri(empty) == mask_data_uri(path)
        assert mask_array_uri(np.zeros((h, w), np.uint8)) == mask_data_uri(path)
    marked = np.zeros((150, 260), dtype=bool)
    marked[60:90, 100:140] = True
    Image.fromarray(np.where(marked, 255, 0).astype(np.uint8)).save(tmp_path / "marked.png")
    assert mask_array_uri(marked) == mask_data_uri(tmp_path / "marked.png")
    assert mask_array_uri(marked) != mask_array_uri(np.zeros_like(marked))
