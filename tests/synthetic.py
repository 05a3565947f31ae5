"""Synthetic test images shared by the test modules (each module paints its own defects)."""

from __future__ import annotations

import numpy as np


def striped_texture(seed: int, h: int = 48, w: int = 48, noise: float = 6.0) -> np.ndarray:
    """An h x w x 3 uint8 striped texture with seeded Gaussian noise: the same part, photographed again."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 50 * np.sin(xx / 3.0) * np.cos(yy / 5.0)
    img = base[:, :, None] + np.random.default_rng(seed).normal(0, noise, (h, w, 3))
    return np.clip(img, 0, 255).astype(np.uint8)


def smooth_texture(seed: int, h: int, w: int | None = None, cell: int = 4) -> np.ndarray:
    """(h, w, 3) uint8 grey texture: seeded noise on a grid of `cell`-pixel cells, bilinearly
    upsampled, grey 90-150. One distribution: every image looks alike, none is equal."""
    import torch
    import torch.nn.functional as F

    w = h if w is None else w
    rng = np.random.default_rng(seed)
    noise = torch.tensor(rng.random((1, 1, h // cell, w // cell)), dtype=torch.float32)
    grey = F.interpolate(noise, size=(h, w), mode="bilinear", align_corners=False)[0, 0].numpy()
    return np.repeat((90 + 60 * grey).astype(np.uint8)[:, :, None], 3, axis=2)


def noisy_part(seed: int, defect: bool = False):
    """A 64 x 64 LoadedImage of the export module's synthetic part with seeded noise (sd 3): the same part
    again; `defect` paints a bright 12 x 12 square at rows 20-31, columns 30-41."""
    from anomalens.export.graph import synthetic_image
    from anomalens.images import LoadedImage

    rgb = synthetic_image(64, 64, seed=0).astype(np.float32) + np.random.default_rng(seed).normal(0, 3, (64, 64, 3))
    rgb = np.clip(rgb, 0, 255).astype(np.uint8)
    if defect:
        rgb[20:32, 30:42] = 250
    return LoadedImage(f"img{seed}.png", rgb)


def planted_batch(seeds, prefix: str = "q", size: int = 64, defect: int | None = None):
    """LoadedImages of `smooth_texture` (8-pixel cells), one per seed, named {prefix}{seed:02d}.png; the
    image at position `defect` gets a red 14 x 14 square at rows 20-33, columns 36-49."""
    from anomalens.images import LoadedImage

    out = []
    for k, seed in enumerate(seeds):
        rgb = smooth_texture(seed, size, cell=8)
        if k == defect:
            rgb[20:34, 36:50] = (255, 0, 0)
        out.append(LoadedImage(path=f"{prefix}{seed:02d}.png", rgb=rgb))
    return out
