"""`anomalens demo`: the main job end to end, offline, on real texture photographs.

The photographs (brick, grass, gravel) ship with scikit-image (BSD licence). Defects are
SYNTHETIC: scratches, stains, holes and cracks painted onto tiles of those real textures, with
masks known by construction. The demo writes the set in MVTec AD layout (so `anomalens
benchmark` runs on it too), fits a detector on a few good tiles per texture, scores the test
tiles and reports image and pixel AUROC.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage import data as skdata
from skimage import draw

TEXTURES = ("brick", "grass", "gravel")
DEFECTS = ("scratch", "stain", "hole", "crack")


@dataclass
class DemoSettings:
    tile: int = 160  # tile side in pixels
    references: int = 4  # good tiles per texture used as few-shot references
    good_tests: int = 6  # good test tiles per texture
    defect_tests: int = 8  # defective test tiles per texture (2 per defect type)
    seed: int = 0


def _texture(name: str) -> np.ndarray:
    img = getattr(skdata, name)()
    return img if img.ndim == 2 else img[..., 0]


def _random_tiles(
    img: np.ndarray, rows: tuple[int, int], n: int, tile: int, rng: np.random.Generator
) -> list[np.ndarray]:
    """n random tiles whose top edge lies in rows (so train and test come from separate bands)."""
    h, w = img.shape
    out = []
    for _ in range(n):
        top = int(rng.integers(rows[0], min(rows[1], h - tile) + 1))
        left = int(rng.integers(0, w - tile + 1))
        out.append(img[top : top + tile, left : left + tile].astype(np.float32))
    return out


def paint_defect(tile: np.ndarray, kind: str, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Paint one synthetic defect; returns (image uint8, mask bool)."""
    t = tile.copy()
    n = t.shape[0]
    mask = np.zeros(t.shape, dtype=bool)
    cy, cx = rng.integers(n // 4, 3 * n // 4, size=2)
    contrast = float(t.std()) * 2.0 + 25.0
    if kind == "scratch":
        angle = rng.uniform(0, np.pi)
        length = rng.uniform(0.35, 0.6) * n
        dy, dx = np.sin(angle) * length / 2, np.cos(angle) * length / 2
        rr, cc = draw.line(int(cy - dy), int(cx - dx), int(cy + dy), int(cx + dx))
        keep = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
        mask[rr[keep], cc[keep]] = True
        mask = ndimage.binary_dilation(mask, iterations=1)
        t[mask] = np.clip(t[mask] + contrast, 0, 255)
    elif kind == "stain":
        r1, r2 = rng.uniform(0.08, 0.16, size=2) * n
        rr, cc = draw.ellipse(cy, cx, r1, r2, shape=t.shape, rotation=rng.uniform(0, np.pi))
        mask[rr, cc] = True
        soft = ndimage.gaussian_filter(mask.astype(np.float32), 2.0)
        tint = -contrast * 0.8 if t.mean() > 100 else contrast * 0.8
        t = np.clip(t + tint * soft, 0, 255)
    elif kind == "hole":
        radius = rng.uniform(0.05, 0.1) * n
        rr, cc = draw.disk((cy, cx), radius, shape=t.shape)
        mask[rr, cc] = True
        t[mask] = rng.uniform(0, 20)
    elif kind == "crack":
        points = [(float(cy), float(cx))]
        heading = rng.uniform(0, 2 * np.pi)
        for _ in range(int(n * 0.4 / 4)):
            heading += rng.normal(0, 0.5)
            y, x = points[-1]
            points.append((y + 4 * np.sin(heading), x + 4 * np.cos(heading)))
        for (y0, x0), (y1, x1) in pairwise(points):
            rr, cc = draw.line(int(y0), int(x0), int(y1), int(x1))
            keep = (rr >= 0) & (rr < n) & (cc >= 0) & (cc < n)
            mask[rr[keep], cc[keep]] = True
        mask = ndimage.binary_dilation(mask, iterations=1)
        t[mask] = np.clip(t[mask] * 0.25, 0, 255)
    else:
        raise ValueError(f"unknown defect kind {kind!r}")
    return np.clip(np.rint(t), 0, 255).astype(np.uint8), mask


def build_demo_dataset(root: Path, settings: DemoSettings | None = None) -> Path:
    """Write the demo set in MVTec AD layout under root; returns root. Deterministic per seed."""
    s = settings or DemoSettings()
    rng = np.random.default_rng(s.seed)
    for name in TEXTURES:
        img = _texture(name)
        half = img.shape[0] // 2
        base = root / name
        train = _random_tiles(img, (0, half - s.tile), s.references, s.tile, rng)
        tests = _random_tiles(img, (half, img.shape[0]), s.good_tests + s.defect_tests, s.tile, rng)
        for i, t in enumerate(train):
            _save(base / "train" / "good" / f"{i:03d}.png", t.astype(np.uint8))
        for i, t in enumerate(tests[: s.good_tests]):
            _save(base / "test" / "good" / f"{i:03d}.png", t.astype(np.uint8))
        for i, t in enumerate(tests[s.good_tests :]):
            kind = DEFECTS[i % len(DEFECTS)]
            defective, mask = paint_defect(t, kind, rng)
            _save(base / "test" / kind / f"{i:03d}.png", defective)
            _save(base / "ground_truth" / kind / f"{i:03d}_mask.png", mask.astype(np.uint8) * 255)
    (root / "README.txt").write_text(
        "anomalens demo set: tiles of real texture photographs (brick, grass, gravel) that ship with\n"
        "scikit-image (BSD licence), with SYNTHETIC defects (scratch, stain, hole, crack) painted on\n"
        "some tiles; masks are known by construction. MVTec AD layout.\n"
    )
    return root


def _save(path: Path, arr: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


@dataclass
class DemoResult:
    """What `run_demo` did: where, with which backbone, and each texture's metrics."""

    out: Path
    method: str
    backbone: str
    references: int
    rows: list[tuple[str, dict]]  # (texture, benchmark metrics of evaluate_category)
    seconds: float


def fresh_dir(path: Path) -> Path:
    """path if it is absent or empty, else path_1, path_2, ...: never write over earlier output."""
    candidate, n = Path(path), 0
    while candidate.exists() and any(candidate.iterdir()):
        n += 1
        candidate = Path(path).with_name(f"{Path(path).name}_{n}")
    candidate.mkdir(parents=True, exist_ok=True)
    return candidate


def run_demo(out: Path, method: str = "patchknn", seed: int = 0) -> DemoResult:
    """Build the demo set in a fresh `out`, then per texture: metrics, and an inspection run
    (overlays, masks, report) with the threshold calibrated on the references."""
    import time

    from .benchmark import evaluate_category
    from .data import load_dataset, sample_references
    from .detector import Detector
    from .inspection import run

    out = fresh_dir(out)
    settings = DemoSettings(seed=seed)
    start = time.perf_counter()
    splits = load_dataset(build_demo_dataset(out / "data", settings), kind="mvtec")
    det = Detector(method=method)
    rows = []
    for name, split in splits.items():
        refs = sample_references(split, settings.references, seed)
        rows.append((name, evaluate_category(det, split, refs)))
        det.calibrate()  # evaluate_category left the detector fitted on refs
        run(
            det,
            [s.path for s in split.test],
            out / "results" / name,
            jobs=0,
            title=f"anomalens demo: {name} (synthetic defects on a real texture)",
            source=f"{len(refs)} good tiles of {name}",
        )
    return DemoResult(out, method, det.backbone_name, settings.references, rows, time.perf_counter() - start)
