"""Changed copies of the references: do relit, stretched or zoomed references cover more good parts?

Four references do not show the lighting and finish of every good part (README "The references, not
the features"). Beside the flipped copies (`augment=flips`), each reference also enters the bank
photometrically changed, on the model input (in [-1, 1]):

* contrast: the grey levels stretched about the input's mean by 0.8 and by 1.25;
* brightness: shifted by -0.1 and +0.1 (about 13 grey levels);
* gamma: the [0, 1] levels raised to 0.8 and to 1.25;
* stretch (geometric, session 24): the middle 75 % of the input's width, and of its height, resized back
  to the square (magnetic_tile's tiles of many aspect ratios are squashed to a square, which stretches
  their grinding marks by as much);
* zoom (geometric, session 24): the top-left and the bottom-right 80 % x 80 % of the input resized back
  (tiles of 100-630 px squashed to 256 show their marks at many scales).

The copies compete for the coreset's places like the flipped ones (the bank keeps as many patches
as without them). Runs `patchknn_variants.py` (today's defaults, its feature cache for the test
images) with the flips extended; give each mode its own --cache folder, or its flipped-reference
entries would be reused by the next mode (link the test images' `*-none.pt` files into it to reuse
them).

    python benchmarks/photometric_references.py contrast --data ../shared/data \
        --categories magnetic_tile,mpdd_metal_plate --shots 1,4 --seeds 0,1,2 --cache /tmp/photometric-contrast
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).parent))
import patchknn_variants

import anomalens.augment
import anomalens.methods.patchknn

MODES = ("contrast", "brightness", "gamma", "stretch", "zoom")
GEOMETRIC_SHARE = {"stretch": 0.75, "zoom": 0.8}  # the crop's share of the input's side


def crop_resized(x: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
    """x[..., top:top+height, left:left+width] resized back to x's (H, W), bilinear with antialiasing."""
    crop = x[None, :, top : top + height, left : left + width]
    return F.interpolate(crop, size=x.shape[-2:], mode="bilinear", antialias=True, align_corners=False)[0]


def geometric_copies(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The two stretched or zoomed copies of one (C, H, W) model input."""
    height, width = x.shape[-2:]
    h, w = round(height * GEOMETRIC_SHARE[mode]), round(width * GEOMETRIC_SHARE[mode])
    if mode == "stretch":
        return [crop_resized(x, 0, (width - w) // 2, height, w), crop_resized(x, (height - h) // 2, 0, h, width)]
    return [crop_resized(x, 0, 0, h, w), crop_resized(x, height - h, width - w, h, w)]


def changed_copies(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The two changed copies of one (C, H, W) model input in [-1, 1]."""
    if mode in GEOMETRIC_SHARE:
        return geometric_copies(x, mode)
    if mode == "contrast":
        mean = x.mean(dim=(-2, -1), keepdim=True)
        return [mean + f * (x - mean) for f in (0.8, 1.25)]
    if mode == "brightness":
        return [x - 0.1, x + 0.1]
    unit = ((x + 1) / 2).clamp(0, 1)
    return [unit.pow(g) * 2 - 1 for g in (0.8, 1.25)]


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] not in MODES:
        raise SystemExit(f"usage: photometric_references.py {{{','.join(MODES)}}} [patchknn_variants.py options]")
    mode = sys.argv.pop(1)
    flipped = anomalens.augment.augment_input

    def with_photometric(x: torch.Tensor, augment: str = "none") -> list[torch.Tensor]:
        copies = flipped(x, augment)
        return copies + changed_copies(x, mode) if augment == "flips" else copies

    # Two more copies per reference: the coreset counts the references' own patches by this count.
    anomalens.augment.AUGMENTATIONS["flips"] += ((0, False), (0, False))
    anomalens.methods.patchknn.augment_input = with_photometric
    sys.argv += ["--groups", "", "--set", 'augment="flips"']
    patchknn_variants.main()


if __name__ == "__main__":
    main()
