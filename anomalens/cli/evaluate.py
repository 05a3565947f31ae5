"""`anomalens evaluate`: a model (or method + references) on a labelled dataset, before deployment."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .app import app, echo, fail
from .build import build_detector, report_threshold, set_threshold
from .config import parse_threshold


@app.command()
def evaluate(
    ctx: typer.Context,
    data: Path = typer.Argument(
        ...,
        help="Labelled images: a dataset root (MVTec, VisA, folder, meta.json) or one MVTec-layout category folder.",
    ),
    dataset: str = typer.Option("auto", "--dataset", help="mvtec | visa | folder | meta | auto"),
    category: str | None = typer.Option(None, "--category", help="The category to evaluate (when DATA has several)."),
    model: Path | None = typer.Option(None, "--model", help="A fitted model directory from `anomalens fit`."),
    method: o.Method = "patchknn",
    refs: o.Refs = None,
    shots: int | None = typer.Option(
        None, "--shots", min=1, help="Instead of --refs: draw this many references from the category's train/good."
    ),
    seed: int = typer.Option(0, "--seed", help="Seed of the --shots draw."),
    out: Path = typer.Option(Path("evaluation"), "--out", "-o", help="Output directory."),
    threshold: str | None = typer.Option(
        None, "--threshold", help="A number, 'auto' or 'none'. Default: the model's; with references, auto."
    ),
    pixel_threshold: o.PixelThreshold = None,
    quantile: o.Quantile = o.QUANTILE_DEFAULT,
    margin: o.Margin = o.MARGIN_DEFAULT,
    max_false_reject: o.MaxFalseReject = None,
    weights: o.Weights = None,
    backbone: o.Backbone = None,
    checkpoint: o.Checkpoint = None,
    grounding: o.Grounding = None,
    image_size: o.ImageSize = None,
    resize: o.Resize = None,
    prompts: o.Prompts = None,
    region: o.Region = None,
    set_: o.Set = None,
    device: o.Device = "auto",
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    pixel_resolution: int | None = typer.Option(None, "--pixel-resolution", help="Longer side for pixel metrics."),
    overwrite: o.Overwrite = False,
    progress: o.Progress = True,
) -> None:
    """Decisions against ground truth: scores.csv, summary.json and evaluation.html under --out.

    The confusion matrix at the threshold, false-reject and escape rates, recall per defect
    type, the benchmark's image and pixel metrics, and the threshold that would have met
    --max-false-reject on this data (default: the model's target, else 1%) with its escape rate.
    """
    p = dict(ctx.params)
    explicit = {
        n for n in p if getattr(ctx.get_parameter_source(n), "name", "DEFAULT") not in ("DEFAULT", "DEFAULT_MAP")
    }
    if shots is not None and (refs is not None or model is not None):
        fail("--shots draws the references: give it without --refs and --model")
    from ..evaluation import SUMMARY_JSON

    if (out / SUMMARY_JSON).exists() and not overwrite:  # before any model is built
        fail(f"{out} already holds an evaluation; pass --overwrite to replace it")
    split = _load_split(data, dataset, category)
    p["defects"] = None
    if shots is not None:
        from ..data import sample_references

        try:
            drawn = sample_references(split, shots, seed)
        except ValueError as err:
            fail(str(err))
        det, _ = build_detector({**p, "refs": None}, explicit)
        det.method.set_category(split.category)
        det.fit(drawn)
        source = f"{shots} references drawn from {split.category} train/good (seed {seed})"
    else:
        det, source = build_detector(p, explicit)
    has_refs = bool(det.reference_paths) and model is None
    value = parse_threshold(threshold)
    if value is None and (has_refs and (det.threshold is None)):
        value = "auto"
    if model is not None:  # the model's threshold stays; --max-false-reject is the target on this data only
        p["max_false_reject"] = None
        explicit.discard("max_false_reject")
    set_threshold(det, p, explicit, value)
    report_threshold(det.threshold, det.pixel_threshold)

    from tqdm.auto import tqdm

    from ..evaluation import EVALUATION_HTML
    from ..evaluation import evaluate as run_evaluation

    bar = tqdm(total=len(split.test), unit="img", disable=not progress, desc=f"evaluate {det.method_name}")
    try:
        summary = run_evaluation(
            det,
            split,
            out,
            max_false_reject=max_false_reject,
            pixel_resolution=pixel_resolution,
            batch_size=batch_size,
            source=source,
            overwrite=overwrite,
            on_image=lambda: bar.update(1),
        )
    except FileExistsError as err:
        fail(str(err))
    finally:
        bar.close()
    print_evaluation(summary)
    echo(f"written: {out / 'scores.csv'}, {out / 'summary.json'}, {out / EVALUATION_HTML}")


def _load_split(data: Path, dataset: str, category: str | None):
    from ..data import load_dataset

    root, categories = data, [category] if category else None
    if dataset in ("auto", "mvtec") and (data / "test").is_dir() and not category:
        root, categories = data.parent, [data.name]  # one MVTec-layout category folder
    try:
        splits = load_dataset(root, kind=dataset, categories=categories)
    except (ValueError, FileNotFoundError) as err:
        fail(str(err))
    if len(splits) != 1:
        fail(f"{data} holds {len(splits)} categories; choose one with --category ({', '.join(sorted(splits))})")
    split = next(iter(splits.values()))
    if not split.test:
        fail(f"{data}: no labelled test images in category {split.category!r}")
    return split


def _pct(rate) -> str:
    return "n/a" if rate is None else f"{rate * 100:.3g}%"


def print_evaluation(summary: dict) -> None:
    """The numbers a person reads first; the rest is in summary.json and evaluation.html."""
    echo(
        f"{summary['category']}: {summary['scored']} images ({summary['good']} good, {summary['defects']} defects), "
        f"{len(summary['failed'])} failed"
    )
    conf = summary.get("confusion")
    if conf:
        m = conf["matrix"]
        echo(f"  good:   OK {m['good']['OK']:>5}  NG {m['good']['NG']:>5}")
        echo(f"  defect: OK {m['defect']['OK']:>5}  NG {m['defect']['NG']:>5}")
        echo(
            f"false-reject rate {_pct(conf['false_reject_rate'])} (95% bound {_pct(conf['false_reject_bound'])}), "
            f"escape rate {_pct(conf['escape_rate'])} (95% bound {_pct(conf['escape_bound'])})"
        )
        recall = ", ".join(f"{k} {_pct(v['recall'])}" for k, v in summary["recall_by_defect_type"].items())
        if recall:
            echo(f"recall by defect type: {recall}")
    else:
        echo("no image threshold: no decisions")
    metrics = summary["metrics"]
    shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in metrics.items() if v is not None)
    echo(f"metrics: {shown or 'n/a'}")
    per_type = summary.get("metrics_by_defect_type") or {}
    aurocs = ", ".join(f"{k} {100 * v['image_auroc']:.1f}" for k, v in per_type.items() if v["image_auroc"] is not None)
    if aurocs:
        echo(f"image AUROC by defect type (against the good images): {aurocs}")
    at = summary.get("at_target")
    if at:
        echo(
            f"threshold for a false-reject rate of {_pct(at['target'])} on this data: {at['threshold']:.6g} "
            f"(false-reject rate {_pct(at['false_reject_rate'])}, escape rate {_pct(at['escape_rate'])})"
        )
