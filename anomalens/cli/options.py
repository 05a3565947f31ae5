"""Flags that several commands share, declared once (`Annotated` types for Typer).

A command writes ``weights: Weights = None``; the flag's name and help text live here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ..calibration import DEFAULT_MARGIN, DEFAULT_QUANTILE

# Defaults shown in --help; the values themselves are the library's.
QUANTILE_DEFAULT = DEFAULT_QUANTILE
MARGIN_DEFAULT = DEFAULT_MARGIN

Method = Annotated[str, typer.Option("--method", "-m", help="patchknn | musc | fade | winclip | filo")]
Refs = Annotated[Path | None, typer.Option("--refs", help="Folder (or file) of good reference images: few-shot.")]
PixelThreshold = Annotated[
    float | None,
    typer.Option("--pixel-threshold", help="Threshold of the mask (default: calibrated, or the image threshold)."),
]
Quantile = Annotated[float, typer.Option("--quantile", help="Quantile of good scores for --threshold auto.")]
Margin = Annotated[float, typer.Option("--margin", help="Margin for --threshold auto (see README).")]
MaxFalseReject = Annotated[
    float | None,
    typer.Option(
        "--max-false-reject",
        help="Target false-reject rate of good parts, e.g. 0.01: --threshold auto takes the order statistic "
        "of the leave-one-out reference scores that expects this rate, and reports its 95% bound "
        "(instead of --quantile/--margin).",
    ),
]
Defects = Annotated[
    Path | None,
    typer.Option(
        "--defects",
        help="Folder of a few known-bad images: --threshold auto keeps the false-reject target and catches "
        "the most of them; the escape rate on them is reported.",
    ),
]

# The options that become method settings (see anomalens.methods.<name> for what each method has).
Weights = Annotated[str | None, typer.Option("--weights", help="CLIP weights: a local file or an open_clip tag.")]
Backbone = Annotated[
    str | None, typer.Option("--backbone", help="Backbone name (e.g. ViT-B-16-plus-240, test-tiny).")
]
Category = Annotated[str | None, typer.Option("--category", help="Object name used in the prompts.")]
Prompts = Annotated[
    list[Path] | None,
    typer.Option(
        "--prompts",
        help="Prompt ensemble JSON (fade): ours or the FADE authors' released files; repeat for several.",
    ),
]
QuantizeMaps = Annotated[
    bool,
    typer.Option("--quantize-maps", help="Maps in 1/255 steps before the metrics, as FADE's released evaluation (fade)."),
]
Device = Annotated[
    str, typer.Option("--device", help="Where the models run: cpu | cuda | cuda:N | auto (a GPU when torch sees one).")
]
Checkpoint = Annotated[
    Path | None,
    typer.Option("--checkpoint", help="FiLo: a `train filo` directory, or the authors' filo_train_on_*.pth."),
]
Grounding = Annotated[Path | None, typer.Option("--grounding", help="Grounding DINO weight folder (filo).")]
ImageSize = Annotated[int | None, typer.Option("--image-size", help="Model input side in pixels.")]
Resize = Annotated[str | None, typer.Option("--resize", help="squash | pad (keep aspect ratio).")]
Set = Annotated[
    list[str] | None, typer.Option("--set", help="Any method setting: --set key=value (repeatable).")
]

# --describe (issue 14): defect phrases from a language model for a category the vocabulary lacks.
Describe = Annotated[
    bool,
    typer.Option(
        "--describe",
        help="fade/winclip/filo: if the defect vocabulary has nothing for --category, ask a language model "
        "(see `anomalens describe`); the list is recorded in settings.json.",
    ),
]
Llm = Annotated[str, typer.Option("--llm", help="Language model for --describe: 'embedded' or an endpoint URL.")]
LlmModel = Annotated[str | None, typer.Option("--llm-model", help="Endpoint model name for --describe.")]

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")]
Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file with any of these options (command-line options override it); a run's settings.json works too.",
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]
