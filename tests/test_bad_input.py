"""Bad input through `anomalens detect`: each bad file is reported by name, the batch goes on."""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from cli_helpers import run
from PIL import Image
from synthetic import striped_texture

from anomalens.images import MAX_WORKING_PIXELS
from anomalens.methods.patchknn import PatchKnn
from anomalens.outputs import read_records

FAST = ["--method", "patchknn", "--image-size", "128"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def texture(seed: int, h: int = 64, w: int = 64) -> np.ndarray:
    return striped_texture(seed, h, w)


@pytest.fixture(scope="module")
def refs(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("refs")
    for i in range(3):  # another size than the 64 x 64 queries
        Image.fromarray(texture(i, 48, 80)).save(root / f"good_{i}.png")
    return root


def constant_png(path: Path, width: int, height: int, grey: int) -> Path:
    """A huge constant-grey PNG written row by row: ~2 MB, no big array in memory."""
    row = b"\x00" + bytes([grey]) * width
    packer = zlib.compressobj(1)
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)  # 8-bit greyscale
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    return path


def test_mixed_bad_inputs_are_reported_and_the_batch_goes_on(refs, tmp_path, monkeypatch):
    q = tmp_path / "queries"
    (q / "sub").mkdir(parents=True)
    Image.fromarray(texture(10)).save(q / "good.png")
    Image.fromarray(texture(11)).save(q / "sub" / "good2.jpg")
    Image.fromarray(texture(12)[:1, :1]).save(q / "tiny_1x1.png")
    sixteen = (texture(13)[:, :, 0].astype(np.uint16) * 257).astype(np.uint16)
    Image.fromarray(sixteen).save(q / "deep_16bit.png")
    assert Image.open(q / "deep_16bit.png").mode.startswith("I")
    Image.fromarray(texture(14)).convert("P", palette=Image.Palette.ADAPTIVE).save(q / "palette.png")
    (q / "notes.txt").write_text("not an image, and not picked up from a folder")
    (q / "text_named.png").write_text("this is text with an image name")
    (q / "empty.png").write_bytes(b"")
    whole = (tmp_path / "whole.png")
    Image.fromarray(texture(15)).save(whole)
    (q / "truncated.png").write_bytes(whole.read_bytes()[:300])
    jpeg = tmp_path / "whole.jpg"
    Image.fromarray(texture(16)).save(jpeg, quality=90)
    (q / "corrupt.jpg").write_bytes(jpeg.read_bytes()[:200] + b"\x00garbage" * 50)
    Image.fromarray(texture(17)).save(q / "locked.png")
    explicit_text = tmp_path / "readme.md"
    explicit_text.write_text("# given explicitly: reported, not skipped")

    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: Path(p).name != "locked.png" and real_access(p, mode))
    out = tmp_path / "out"
    res = run(
        [
            "detect", q, q / "good.png", f"{q}/./good.png", explicit_text, tmp_path / "missing.png",
            "--refs", refs, "--out", out, *FAST, "--threshold", "auto",
        ],
        code=1,
    )
    recs = {Path(r["path"]).name: r for r in read_records(out)}
    ok = {n for n, r in recs.items() if r["status"] == "ok"}
    failed = {n: r["error"] for n, r in recs.items() if r["status"] == "error"}
    assert ok == {"good.png", "good2.jpg", "tiny_1x1.png", "deep_16bit.png", "palette.png"}
    assert set(failed) == {"text_named.png", "empty.png", "truncated.png", "corrupt.jpg", "locked.png",
                           "readme.md", "missing.png"}
    assert "notes.txt" not in recs  # inside a folder, only image extensions are picked up
    assert "not an image" in failed["text_named.png"] and "not an image" in failed["readme.md"]
    assert "empty" in failed["empty.png"]
    assert "truncated" in failed["truncated.png"] or "corrupt" in failed["truncated.png"]
    assert failed["corrupt.jpg"]
    assert "permission denied" in failed["locked.png"]
    assert "does not exist" in failed["missing.png"]
    # Duplicates (the same file via the folder, directly, and as ./) are scored once.
    assert sum(Path(r["path"]).name == "good.png" for r in read_records(out)) == 1
    assert "2 duplicate input(s)" in res.output
    # The summary lists every failure with its file name and reason; so does the report.
    summary = res.output[res.output.index("failures (7):") :]
    for name, reason in failed.items():
        assert f"{name}: {reason}" in summary
    html = (out / "report.html").read_text()
    assert "Failures (7)" in html and "locked.png" in html
    # Odd sizes and modes give maps of the image's own size.
    assert recs["tiny_1x1.png"]["map_size"] == [1, 1]
    assert np.load(out / recs["tiny_1x1.png"]["map"]).shape == (1, 1)
    assert np.load(out / recs["deep_16bit.png"]["map"]).shape == (64, 64)
    assert recs["good.png"]["decision"] in ("OK", "NG")


def test_all_good_exits_0(refs, tmp_path):
    Image.fromarray(texture(20)).save(tmp_path / "a.png")
    res = run(["detect", tmp_path / "a.png", "--refs", refs, "--out", tmp_path / "out", *FAST, "--threshold", "none"])
    assert "1 images: OK 0, NG 0, no decision 1, failed 0" in res.output


def test_reference_folder_without_images_is_a_usage_error(refs, tmp_path):
    (tmp_path / "empty_refs").mkdir()
    (tmp_path / "text_refs").mkdir()
    (tmp_path / "text_refs" / "notes.txt").write_text("no images here")
    Image.fromarray(texture(21)).save(tmp_path / "q.png")
    for folder in ("empty_refs", "text_refs"):
        res = run(["detect", tmp_path / "q.png", "--refs", tmp_path / folder, "--out", tmp_path / "o", *FAST], code=2)
        assert f"{tmp_path / folder}: reference folder holds no images" in res.output
        res = run(["fit", "--refs", tmp_path / folder, "--out", tmp_path / "m", *FAST], code=2)
        assert "reference folder holds no images" in res.output
    res = run(["detect", tmp_path / "q.png", "--refs", tmp_path / "nope", "--out", tmp_path / "o", *FAST], code=2)
    assert "does not exist" in res.output
    bad = tmp_path / "bad_refs"
    bad.mkdir()
    Image.fromarray(texture(22)).save(bad / "a.png")
    (bad / "b.png").write_bytes(b"")
    res = run(["fit", "--refs", bad, "--out", tmp_path / "m", *FAST], code=2)
    assert f"{bad / 'b.png'}: file is empty" in res.output
    res = run(["detect", tmp_path / "nothing_here", "--out", tmp_path / "o2", *FAST], code=1)
    assert "file does not exist" in res.output
    (tmp_path / "no_images").mkdir()
    res = run(["detect", tmp_path / "no_images", "--out", tmp_path / "o3", *FAST], code=2)
    assert "no image files found" in res.output


def test_scoring_failure_of_one_image_does_not_stop_the_batch(refs, tmp_path, monkeypatch):
    for i in range(4):
        Image.fromarray(texture(30 + i)).save(tmp_path / f"img{i}.png")
    original = PatchKnn.predict

    def flaky(method, images):
        if any(Path(i.path).name == "img2.png" for i in images):
            raise RuntimeError("simulated out of memory")
        return original(method, images)

    monkeypatch.setattr(PatchKnn, "predict", flaky)
    out = tmp_path / "out"
    res = run([
        "detect", *(tmp_path / f"img{i}.png" for i in range(4)), "--refs", refs, "--out", out, *FAST,
        "--batch-size", "4",
    ], code=1)
    recs = {Path(r["path"]).name: r for r in read_records(out)}
    assert [n for n, r in recs.items() if r["status"] == "ok"] == ["img0.png", "img1.png", "img3.png"]
    assert recs["img2.png"]["error"] == "could not be scored: RuntimeError: simulated out of memory"
    assert "img2.png: could not be scored" in res.output


def test_huge_image_is_worked_on_at_a_capped_resolution(refs, tmp_path):
    big = constant_png(tmp_path / "huge_20000.png", 20000, 20000, 140)
    assert big.stat().st_size < 2_000_000
    Image.fromarray(texture(40)).save(tmp_path / "small.png")
    out = tmp_path / "out"
    # --no-report: report.html's thumbnails decode the original again (covered by test_report.py).
    # (Its speed is measured by benchmarks, not asserted here: a timed test fails on a busy machine.)
    run(["detect", big, tmp_path / "small.png", "--refs", refs, "--out", out, *FAST, "--jobs", "0",
         "--threshold", "auto", "--no-report", "--max-pixels", 400_000_000])
    recs = {Path(r["path"]).name: r for r in read_records(out)}
    rec = recs["huge_20000.png"]
    assert rec["status"] == "ok" and rec["image_size"] == [20000, 20000] and rec["map_size"] == [4000, 4000]
    assert 4000 * 4000 <= MAX_WORKING_PIXELS  # 20000 x 20000 is reduced 5 x
    assert np.load(out / rec["map"], mmap_mode="r").shape == (4000, 4000)
    assert (out / rec["map"]).stat().st_size < 70_000_000  # 64 MB instead of 1.6 GB
    width, height = Image.open(out / rec["overlay"]).size
    assert width == 4000 and 4000 < height < 4100  # the image, and the run's colour bar under it
    assert recs["small.png"]["map_size"] == [64, 64]


def test_working_resolution_cap_keeps_modes_and_orientation(tmp_path, monkeypatch):
    import anomalens.images as images

    monkeypatch.setattr(images, "MAX_WORKING_PIXELS", 100 * 100)
    rgb = np.zeros((200, 300, 3), np.uint8)
    rgb[:40, :60] = (255, 0, 0)  # a red top-left corner
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    Image.fromarray(rgb).save(tmp_path / "rot.png", exif=exif)
    img = images.load_image(tmp_path / "rot.png")
    assert img.original_hw == (300, 200) and img.rgb.shape == (100, 67, 3)
    assert tuple(img.rgb[2, -3]) == (255, 0, 0) and tuple(img.rgb[-3, 2]) == (0, 0, 0)
    Image.fromarray(rgb).save(tmp_path / "a.jpg", quality=95)
    img = images.load_image(tmp_path / "a.jpg")  # JPEG: decoded at reduced scale (draft), then reduced
    assert img.original_hw == (200, 300) and img.rgb.shape[0] * img.rgb.shape[1] <= 100 * 100
    deep = np.full((200, 300), 65535, np.uint16)
    deep[:, :150] = 0
    Image.fromarray(deep).save(tmp_path / "deep.png")
    img = images.load_image(tmp_path / "deep.png")  # 16-bit: same 0..65535 scaling as unreduced
    assert img.rgb.shape == (67, 100, 3) and img.rgb[0, 0, 0] == 0 and img.rgb[0, -1, 0] == 255
    pal = Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4)
    pal.save(tmp_path / "pal.png")
    img = images.load_image(tmp_path / "pal.png")  # palette: converted to RGB before averaging
    assert tuple(img.rgb[2, 2]) == (255, 0, 0)
    monkeypatch.setattr(images, "MAX_WORKING_PIXELS", 10**9)
    assert images.load_image(tmp_path / "deep.png").original_hw is None
