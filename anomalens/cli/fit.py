"""`anomalens fit`: fit a detector on good images, calibrate its threshold, save it."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from ..outputs import atomic_write
from ..typical_images import DEFAULT_TYPICAL_ROUNDS, DEFAULT_TYPICAL_SHARE
from . import options as o
from .app import app, echo, fail
from .build import build_detector, report_threshold, set_threshold
from .config import given_options, parse_threshold


@app.command()
@o.detector_flags
def fit(
    ctx: typer.Context,
    refs: Path | None = typer.Option(None, "--refs", help="Folder of good reference images (or --unlabeled)."),
    unlabeled: Path | None = typer.Option(
        None,
        "--unlabeled",
        help="Folder of unlabeled images of the product (no known-good set): the share that musc's mutual "
        "score ranks most typical become the references.",
    ),
    typical_share: float = typer.Option(
        DEFAULT_TYPICAL_SHARE, "--typical-share", help="With --unlabeled: the share of its images taken."
    ),
    typical_rounds: int = typer.Option(
        DEFAULT_TYPICAL_ROUNDS,
        "--typical-rounds",
        min=1,
        help="With --unlabeled: picks of the share (2: picked again by the mutual score joined with patchknn's "
        "on the first pick, as musc's pseudo-references; 1: the mutual score alone).",
    ),
    out: Path | None = typer.Option(None, "--out", "-o", help="Model directory to write (required)."),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        help="A number, 'auto' (leave-one-out over the references; the default with --refs), or 'none' "
        "(the default with --unlabeled).",
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a model already in --out."),
    progress: o.Progress = True,
) -> None:
    """Fit a detector on good images, calibrate its threshold, and save it (safetensors + JSON).

    Then `anomalens detect --model OUT ...` uses the saved settings, references and threshold.
    """
    p, explicit = given_options(ctx)
    if p["refs"] is None and p["unlabeled"] is None:
        fail("--refs (a folder of good reference images) or --unlabeled (a folder of the product's images) is required")
    if p["refs"] is not None and p["unlabeled"] is not None:
        fail(
            "--refs and --unlabeled cannot be combined: give known-good images, or let the folder's typical ones serve"
        )
    for name in ("typical_share", "typical_rounds"):
        if name in explicit and p["unlabeled"] is None:
            flag = "--" + name.replace("_", "-")
            fail(f"{flag} belongs to --unlabeled: how an unlabeled folder's references are chosen")
    if p["out"] is None:
        fail("--out is required: the model directory to write")
    out = Path(p["out"])
    if (out / "detector.json").exists() and not p["overwrite"]:
        fail(f"{out} already holds a model; pass --overwrite to replace it")
    threshold_value = parse_threshold(p["threshold"] if p["threshold"] is not None else default_fit_threshold(p))
    typical = None
    if p["unlabeled"] is not None:
        if threshold_value == "auto" or p.get("max_false_reject") is not None or p.get("defects") is not None:
            fail(UNLABELED_NO_AUTO)
        typical = typical_references(p)
    with FitProgressBar(enabled=p.get("progress", True)) as bar:
        chosen = None if typical is None else typical.chosen
        det, source = build_detector({**p, "model": None}, explicit, progress=bar, references=chosen)
        set_threshold(det, {**p, "model": None}, explicit, threshold_value, progress=bar)
    try:
        det.save(out, overwrite=p["overwrite"])
    except (FileExistsError, OSError) as err:
        fail(f"cannot save the model to {out}: {err}")
    if typical is not None:  # how the references were chosen, beside the model
        record = json.dumps({"unlabeled": str(p["unlabeled"]), **typical.to_dict()}, indent=2).encode("utf-8")
        atomic_write(out / TYPICAL_IMAGES_FILE, lambda f: f.write(record))
        source = f"{source} (the most typical of {p['unlabeled']}, listed in {TYPICAL_IMAGES_FILE})"
    echo(f"saved {det.method_name} model fitted on {source} to {out}")
    report_threshold(det.threshold, det.pixel_threshold)


# Leave-one-out over the most typical images of a folder would put the threshold below what the
# product's other good images score: they were chosen for scoring low.
UNLABELED_NO_AUTO = (
    "--threshold auto (or --max-false-reject, --defects) cannot be calibrated with --unlabeled: its references "
    "were chosen as the folder's most typical images, so leave-one-out over them would put the threshold too "
    "low; give a number, or none"
)
TYPICAL_IMAGES_FILE = "typical_images.json"


def default_fit_threshold(p: dict) -> str:
    return "none" if p.get("unlabeled") is not None else "auto"


def typical_references(p: dict):
    """The --unlabeled folder's most typical images (musc's mutual score), with what was skipped said."""
    from ..typical_images import choose_typical_images
    from .build import image_reading, inspection_region

    folder = Path(p["unlabeled"])
    if not folder.exists():
        fail(f"{folder}: unlabeled folder does not exist")
    try:
        typical = choose_typical_images(
            [folder],
            share=p["typical_share"],
            rounds=p["typical_rounds"],
            device=p.get("device", "auto"),
            reading=image_reading(p),
            log=echo,
            region=inspection_region(p),  # a part's own marks left out of the ranking too
            progress=bool(p.get("progress", True)),
        )
    except ValueError as err:
        fail(f"--unlabeled {folder}: {err}")
    how = "musc's mutual score" if typical.rounds == 1 else "musc's second pick (the joined score)"
    echo(
        f"unlabeled: {len(typical.chosen)} of {len(typical.mutual_scores)} images of {folder} as references, "
        f"the share {typical.share} that {how} ranks most typical"
    )
    return typical


class FitProgressBar:
    """One tqdm bar per phase of `fit` (reading, fitting, calibrating the references), on stderr.

    Hidden when stderr is not a terminal (tqdm's disable=None) or with --no-progress."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.bar = None
        self.phase = None

    def __call__(self, event) -> None:
        if not self.enabled:
            return
        if event.phase != self.phase:
            self.close()
            from tqdm.auto import tqdm

            self.phase = event.phase
            self.bar = tqdm(total=event.total, unit="ref", desc=event.phase, disable=None, dynamic_ncols=True)
        self.bar.n = event.done
        self.bar.refresh()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> FitProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
