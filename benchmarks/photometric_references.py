"""Photometric copies of the references: do brighter/darker or flatter/steeper references cover more good parts?

Four references do not show the lighting and finish of every good part (README "The references, not
the features"). Beside the flipped copies (`augment=flips`), each reference also enters the bank
photometrically changed, on the model input (in [-1, 1]):

* contrast: the grey levels stretched about the input's mean by 0.8 and by 1.25;
* brightness: shifted by -0.1 and +0.1 (about 13 grey levels);
* gamma: the [0, 1] levels raised to 0.8 and to 1.25.

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

sys.path.insert(0, str(Path(__file__).parent))
import patchknn_variants

import anomalens.augment
import anomalens.methods.patchknn

MODES = ("contrast", "brightness", "gamma")


def photometric_copies(x: torch.Tensor, mode: str) -> list[torch.Tensor]:
    """The two changed copies of one (C, H, W) model input in [-1, 1]."""
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
        return copies + photometric_copies(x, mode) if augment == "flips" else copies

    # Two more copies per reference: the coreset counts the references' own patches by this count.
    anomalens.augment.AUGMENTATIONS["flips"] += ((0, False), (0, False))
    anomalens.methods.patchknn.augment_input = with_photometric
    sys.argv += ["--groups", "", "--set", 'augment="flips"']
    patchknn_variants.main()


if __name__ == "__main__":
    main()
