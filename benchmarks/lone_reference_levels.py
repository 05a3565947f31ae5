"""Screen the fused recipes' levels for a lone reference: its halves instead of its mirrored copies.

With one reference `fused_recipe` standardises each recipe's map by the median and MAD of the reference
scored against its own mirrored and turned copies (`recipe_fusion.normal_maps`). Those copies are the same
surface, so the level may sit below what a new good image reaches. This screen, in its own process only,
takes the level instead from the lower half of each model input (16 px margin) scored against a bank of its
upper half, and runs `anomalens` with the remaining arguments (README "Both recipes at once", session 31):

    python benchmarks/lone_reference_levels.py -- --threads 1 benchmark --data ../shared/data \\
        --categories magnetic_tile,mpdd_metal_plate --method patchknn --shots 1 --seeds 0,1,2 --out halves
"""

from __future__ import annotations

from screen_cli import run_replaced

from anomalens.methods import recipe_fusion
from anomalens.methods.base import MethodOutput

MARGIN = 16  # model-input pixels below the halves' border left out (the map is smoothed across it)
ORIGINAL = recipe_fusion.normal_maps


def halves_normal_maps(method, references: list) -> list[MethodOutput]:
    if len(references) > 1:
        return ORIGINAL(method, references)
    feats, layouts = method._features(references)
    tiles = feats[0]  # (T, h, w, C)
    upper = tiles[:, : tiles.shape[1] // 2].reshape(-1, tiles.shape[-1])
    maps, score = method.input_maps(tiles, layouts[0], method.build_bank([upper]))
    lower = maps[:, maps.shape[1] // 2 + MARGIN :, :]
    return [MethodOutput(score, lower.reshape(-1, lower.shape[-1]).numpy().astype("float32"))]


def main() -> None:
    run_replaced(__doc__, recipe_fusion, "normal_maps", halves_normal_maps)


if __name__ == "__main__":
    main()
