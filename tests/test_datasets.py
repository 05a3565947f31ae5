"""Dataset loaders on tiny synthetic folders of each layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from anomalens.data import (
    IMAGE_EXTENSIONS,
    CategorySplit,
    Sample,
    load_dataset,
    load_mask,
    read_meta,
    sample_references,
    write_meta,
)
from anomalens.data.folder import load_folder_dataset


def write_image(path: Path, size: tuple[int, int] = (8, 6), value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0]), value, dtype=np.uint8)).save(path)
    return path


def write_mask(path: Path, size: tuple[int, int] = (8, 6)) -> Path:
    """A mask whose left half is anomalous (255)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    values = np.zeros((size[1], size[0]), dtype=np.uint8)
    values[:, : size[0] // 2] = 255
    Image.fromarray(values).save(path)
    return path


@pytest.fixture
def mvtec_root(tmp_path: Path) -> Path:
    root = tmp_path / "mvtec"
    # "bottle": the full layout; one defect image has no mask.
    for name in ("000.png", "001.png", "002.png", "003.png", "004.png"):
        write_image(root / "bottle" / "train" / "good" / name)
    write_image(root / "bottle" / "test" / "good" / "000.png")
    write_image(root / "bottle" / "test" / "good" / "001.PNG")
    write_image(root / "bottle" / "test" / "good" / ".hidden.png")
    (root / "bottle" / "test" / "good" / "notes.txt").write_text("not an image")
    write_image(root / "bottle" / "test" / "crack" / "000.png")
    write_image(root / "bottle" / "test" / "crack" / "001.jpg")
    write_mask(root / "bottle" / "ground_truth" / "crack" / "000_mask.png")
    # "strip": only defects with masks, no train/good, no test/good.
    write_image(root / "strip" / "test" / "scratch" / "a.png")
    write_mask(root / "strip" / "ground_truth" / "scratch" / "a_mask.png")
    # Not a category: no test folder.
    (root / "docs").mkdir()
    return root


def test_mvtec_layout(mvtec_root: Path):
    splits = load_dataset(mvtec_root)
    assert list(splits) == ["bottle", "strip"]
    bottle = splits["bottle"]
    assert [p.name for p in bottle.train_good] == ["000.png", "001.png", "002.png", "003.png", "004.png"]
    assert [(s.path.name, s.label, s.defect_type) for s in bottle.test] == [
        ("000.png", 1, "crack"),
        ("001.jpg", 1, "crack"),
        ("000.png", 0, "good"),
        ("001.PNG", 0, "good"),
    ]
    crack_with_mask, crack_without_mask = bottle.test[0], bottle.test[1]
    assert crack_with_mask.mask_path == mvtec_root / "bottle" / "ground_truth" / "crack" / "000_mask.png"
    assert crack_without_mask.mask_path is None
    assert all(s.mask_path is None for s in bottle.test if s.label == 0)
    assert bottle.has_normals and bottle.has_anomalies and bottle.has_masks

    strip = splits["strip"]
    assert strip.train_good == []
    assert not strip.has_normals and strip.has_anomalies and strip.has_masks
    assert strip.test[0].category == "strip"


def test_unknown_category_lists_available(mvtec_root: Path):
    assert list(load_dataset(mvtec_root, categories=["strip"])) == ["strip"]
    with pytest.raises(ValueError, match="bottle"):
        load_dataset(mvtec_root, categories=["bottle", "cable"])


def test_category_without_masks():
    split = CategorySplit("c", [], [Sample(Path("x.png"), 1, None, "c", "dent")])
    assert split.has_anomalies and not split.has_masks and not split.has_normals


def test_image_extensions():
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"} == set(IMAGE_EXTENSIONS)


def test_load_mask(tmp_path: Path):
    mask_path = write_mask(tmp_path / "m.png", size=(8, 6))
    anomalous = Sample(tmp_path / "x.png", 1, mask_path, "c", "dent")
    mask = load_mask(anomalous, (6, 8))
    assert mask.dtype == bool and mask.shape == (6, 8)
    assert mask[:, :4].all() and not mask[:, 4:].any()
    resized = load_mask(anomalous, (3, 16))
    assert resized.shape == (3, 16) and resized[:, :8].all() and not resized[:, 8:].any()
    normal = Sample(tmp_path / "x.png", 0, None, "c", "good")
    assert not load_mask(normal, (4, 5)).any() and load_mask(normal, (4, 5)).shape == (4, 5)
    missing = Sample(tmp_path / "x.png", 1, None, "c", "dent")
    assert not load_mask(missing, (4, 5)).any()


def test_load_mask_treats_any_non_zero_as_anomalous(tmp_path: Path):
    values = np.zeros((4, 4, 3), dtype=np.uint8)
    values[0, 0] = (0, 1, 0)
    Image.fromarray(values).save(tmp_path / "rgb.png")
    mask = load_mask(Sample(tmp_path / "x.png", 1, tmp_path / "rgb.png", "c", "d"), (4, 4))
    assert mask.sum() == 1 and mask[0, 0]


def test_sample_references_is_seeded(mvtec_root: Path):
    split = load_dataset(mvtec_root)["bottle"]
    first = sample_references(split, 3, seed=0)
    assert first == sample_references(split, 3, seed=0)
    # Directory order must not matter.
    shuffled = CategorySplit(split.category, list(reversed(split.train_good)), split.test)
    assert sample_references(shuffled, 3, seed=0) == first
    assert len(set(first)) == 3 and set(first) <= set(split.train_good)
    assert sample_references(split, 3, seed=1) != first
    with pytest.raises(ValueError, match="5"):
        sample_references(split, 6, seed=0)


@pytest.fixture
def visa_root(tmp_path: Path) -> Path:
    root = tmp_path / "visa"
    base = root / "candle" / "Data"
    rows = ["object,split,label,image,mask"]
    for name in ("001.JPG", "002.JPG", "003.JPG"):
        write_image(base / "Images" / "Normal" / name)
        rows.append(f"candle,train,normal,candle/Data/Images/Normal/{name},")
    write_image(base / "Images" / "Normal" / "004.JPG")
    rows.append("candle,test,normal,candle/Data/Images/Normal/004.JPG,")
    write_image(base / "Images" / "Anomaly" / "100.JPG")
    write_mask(base / "Masks" / "Anomaly" / "100.png")
    rows.append("candle,test,anomaly,candle/Data/Images/Anomaly/100.JPG,candle/Data/Masks/Anomaly/100.png")
    rows.append("pcb1,test,anomaly,pcb1/Data/Images/Anomaly/000.JPG,pcb1/Data/Masks/Anomaly/000.png")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_split_file(visa_root: Path):
    splits = load_dataset(visa_root)  # auto-detected from split_csv/1cls.csv
    assert list(splits) == ["candle", "pcb1"]
    candle = splits["candle"]
    assert [p.name for p in candle.train_good] == ["001.JPG", "002.JPG", "003.JPG"]
    normal, anomaly = sorted(candle.test, key=lambda s: s.label)
    assert normal == Sample(visa_root / "candle/Data/Images/Normal/004.JPG", 0, None, "candle", "good")
    assert anomaly == Sample(
        visa_root / "candle/Data/Images/Anomaly/100.JPG",
        1,
        visa_root / "candle/Data/Masks/Anomaly/100.png",
        "candle",
        "anomaly",
    )
    assert load_mask(anomaly, (6, 8)).sum() == 24
    assert splits["pcb1"].train_good == [] and not splits["pcb1"].has_normals


def test_visa_without_split_file_names_it(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match=r"1cls\.csv"):
        load_dataset(tmp_path, kind="visa")


def test_plain_folder(tmp_path: Path):
    write_image(tmp_path / "ok" / "a.png")
    write_image(tmp_path / "ok" / "b.bmp")
    write_image(tmp_path / "ng" / "c.png")
    write_image(tmp_path / "ng" / "d.tif")
    write_image(tmp_path / "ng" / "e.png")
    write_mask(tmp_path / "gt" / "c.png")
    write_mask(tmp_path / "gt" / "d_mask.png")
    write_image(tmp_path / "refs" / "r.png")
    split = load_folder_dataset(
        tmp_path / "ok",
        tmp_path / "ng",
        masks_dir=tmp_path / "gt",
        train_good_dir=tmp_path / "refs",
        category="pcb",
    )
    assert split.category == "pcb" and [p.name for p in split.train_good] == ["r.png"]
    assert [(s.path.name, s.label, s.mask_path and s.mask_path.name) for s in split.test] == [
        ("a.png", 0, None),
        ("b.bmp", 0, None),
        ("c.png", 1, "c.png"),
        ("d.tif", 1, "d_mask.png"),
        ("e.png", 1, None),
    ]
    assert {s.defect_type for s in split.test} == {"good", "anomaly"}


def test_folder_kind(tmp_path: Path):
    root = tmp_path / "widgets"
    write_image(root / "good" / "a.png")
    write_image(root / "bad" / "b.png")
    write_mask(root / "masks" / "b_mask.png")
    splits = load_dataset(root, kind="folder")
    assert list(splits) == ["widgets"]
    assert splits["widgets"].has_masks and splits["widgets"].train_good == []


def test_meta_round_trip(mvtec_root: Path):
    splits = load_dataset(mvtec_root)
    path = write_meta(mvtec_root, splits)
    assert path == mvtec_root / "meta.json"
    meta = json.loads(path.read_text())
    crack = meta["test"]["bottle"][0]
    assert crack == {
        "img_path": "bottle/test/crack/000.png",
        "mask_path": "bottle/ground_truth/crack/000_mask.png",
        "cls_name": "bottle",
        "specie_name": "crack",
        "anomaly": 1,
    }
    assert meta["test"]["bottle"][1]["mask_path"] == ""
    assert meta["train"]["strip"] == []
    assert read_meta(mvtec_root) == splits
    assert load_dataset(mvtec_root, kind="meta", categories=["strip"]) == {"strip": splits["strip"]}


def test_meta_refuses_to_overwrite(mvtec_root: Path, tmp_path: Path):
    splits = load_dataset(mvtec_root)
    target = tmp_path / "elsewhere" / "index.json"
    write_meta(mvtec_root, splits, path=target)
    with pytest.raises(FileExistsError, match=r"index\.json"):
        write_meta(mvtec_root, splits, path=target)
    write_meta(mvtec_root, {"strip": splits["strip"]}, path=target, overwrite=True)
    assert list(json.loads(target.read_text())["test"]) == ["strip"]


def test_meta_rejects_paths_outside_root(mvtec_root: Path, tmp_path: Path):
    outside = CategorySplit("x", [tmp_path / "elsewhere.png"], [])
    with pytest.raises(ValueError, match="not inside"):
        write_meta(mvtec_root, {"x": outside}, path=tmp_path / "m.json")
