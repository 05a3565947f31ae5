"""Flags that several commands share, declared once (`Annotated` types for Typer).

A command writes ``weights: Weights = None``; the flag's name and help text live here.
"""

from __future__ import annotations

import functools
import inspect
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
    typer.Option(
        "--quantize-maps", help="Maps in 1/255 steps before the metrics, as FADE's released evaluation (fade)."
    ),
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

# How image files are read (anomalens.image_reading; saved with a fitted model).
BitDepth = Annotated[
    str | None,
    typer.Option(
        "--bit-depth",
        help="Significant bits of 16-bit images: auto (the file's PNG sBIT / TIFF tags, else 16) | 8 | 10 | 12 "
        "| 14 | 16. Default: the model's, else auto.",
    ),
]
MaxPixels = Annotated[
    int | None,
    typer.Option(
        "--max-pixels",
        help="Refuse images above this many pixels without decoding them. Default: the model's, else 50000000.",
    ),
]

Region = Annotated[
    Path | None,
    typer.Option(
        "--region",
        help="Inspection region: a mask image (white: inspected, black: ignored, e.g. a date code or the "
        "fixture), stretched to each image; only its pixels count for the score, the map and the mask "
        "(patchknn). Saved with a fitted model.",
    ),
]

Overwrite = Annotated[bool, typer.Option("--overwrite", help="Replace results already in --out.")]
def _load_config(ctx: typer.Context, param: typer.CallbackParam, value: Path | None) -> Path | None:
    from .config import load_config

    return load_config(ctx, param, value)


Config = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="YAML file with any of these options (command-line options override it; --set adds to its settings); "
        "a run's settings.json works too; or a preset's name: textured-surface, large-defects "
        "(README 'Which setting for which surface'), any-surface (README 'Both recipes at once'), musc-textured "
        "(README 'The texture recipe inside musc').",
        callback=_load_config,
        is_eager=True,  # read before the other options, whose defaults it sets
    ),
]
Progress = Annotated[bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")]


# The flags of the commands that build a detector from options (`detect`, `fit`): name -> (type, default).
DETECTOR_FLAGS = {
    "method": (Method, "patchknn"),
    "pixel_threshold": (PixelThreshold, None),
    "quantile": (Quantile, QUANTILE_DEFAULT),
    "margin": (Margin, MARGIN_DEFAULT),
    "max_false_reject": (MaxFalseReject, None),
    "defects": (Defects, None),
    "weights": (Weights, None),
    "backbone": (Backbone, None),
    "category": (Category, None),
    "prompts": (Prompts, None),
    "checkpoint": (Checkpoint, None),
    "grounding": (Grounding, None),
    "image_size": (ImageSize, None),
    "resize": (Resize, None),
    "bit_depth": (BitDepth, None),
    "max_pixels": (MaxPixels, None),
    "region": (Region, None),
    "device": (Device, "auto"),
    "set_": (Set, None),
    "describe_": (Describe, False),
    "llm": (Llm, "embedded"),
    "llm_model": (LlmModel, None),
    "config": (Config, None),
}


def detector_flags(command):
    """Give `command` the DETECTOR_FLAGS after its own parameters.

    Typer reads a command's options from its signature, so they are added to the signature
    (`__signature__`, which `inspect.signature` honours); the command reads their values from
    ``ctx.params`` (`config.given_options`), so its own parameter list names only its own flags.
    """
    own = inspect.signature(command, eval_str=True)
    shared = [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=kind, default=default)
        for name, (kind, default) in DETECTOR_FLAGS.items()
        if name not in own.parameters
    ]

    @functools.wraps(command)
    def with_flags(**values):
        return command(**{k: v for k, v in values.items() if k in own.parameters})

    with_flags.__signature__ = own.replace(parameters=[*own.parameters.values(), *shared])
    return with_flags
