"""Screen a change to the recipe patchknn's default fuses beside itself (`fused_recipe=auto`).

The partner's settings are `KNN_RECIPES[AUTO_FUSED_RECIPE]`; this script adds the given settings to that
recipe in this process only and runs `anomalens` with the remaining arguments, so the variant goes through
the library's own fit, calibration and scoring (README "Both recipes at once", session 26's screen):

    python benchmarks/fused_partner_screen.py '{"coarse_weight": 0.5}' -- --threads 1 benchmark \\
        --data ../shared/data --categories magnetic_tile,mpdd_metal_plate --method patchknn --shots 1,4 \\
        --seeds 0,1,2 --out partner_coarse05
"""

from __future__ import annotations

import json

from screen_cli import run_anomalens, split_arguments

from anomalens.methods import patchknn_settings


def main() -> None:
    (changes,), arguments = split_arguments(__doc__, own=1)
    extra = json.loads(changes)
    name = patchknn_settings.AUTO_FUSED_RECIPE
    patchknn_settings.KNN_RECIPES[name] = {**patchknn_settings.KNN_RECIPES[name], **extra}
    run_anomalens(arguments)  # after the change: nothing has copied the recipe yet


if __name__ == "__main__":
    main()
