"""Screen the zero-shot fusion rule with references: each image's own levels instead of the references'.

With references `fused_recipe` standardises both recipes' maps by levels of the references' leave-one-out maps
(one reference: against its own mirrored and turned copies) and keeps the larger. This screen replaces that,
in this process only, by the zero-shot rule (`recipe_fusion.fuse_zero_shot`: the partner's map brought into
the default recipe's values by each image's own levels, the larger kept, the default recipe's score) and runs
`anomalens` with the remaining arguments (README "Both recipes at once", session 26):

    python benchmarks/fused_rule_screen.py -- --threads 1 benchmark --data ../shared/data \\
        --categories magnetic_tile,mpdd_metal_plate --method patchknn --shots 1,4 --seeds 0,1,2 --out rule_screen
"""

from __future__ import annotations

from screen_cli import run_replaced

from anomalens.methods import recipe_fusion


def _image_level_fusion(first, second, levels):
    """`fuse_inputs`'s signature, the zero-shot rule's result (the references' levels are not read)."""
    return recipe_fusion.fuse_zero_shot(first[0], second[0]), first[1]


def main() -> None:
    run_replaced(__doc__, recipe_fusion, "fuse_inputs", _image_level_fusion)


if __name__ == "__main__":
    main()
