"""`anomalens detect`: score images and write results, overlays, masks, maps and a report."""

from __future__ import annotations

from pathlib import Path

import typer

from . import options as o
from .app import app, echo, fail
from .build import build_detector, describe, report_threshold, set_threshold
from .config import given_options, parse_threshold

# patchknn zero-shot compares each image with itself alone: a part's own marks (a stamped code, a hole)
# are as unique there as a defect (README "A part's own marks"); musc compares the images with each other.
ZERO_SHOT_BATCH_NOTE = (
    "note: zero-shot patchknn scores each image against its own patches, where a part's own marks "
    "(stamped codes, holes, edges) look like defects; with no good references, --method musc scores "
    "each of these {n} images against the others (slower, much stronger on a folder of one product)"
)


@app.command()
@o.detector_flags
def detect(
    ctx: typer.Context,
    images: list[Path] = typer.Argument(None, help="Image files and/or directories (searched recursively)."),
    refs: o.Refs = None,
    out: Path = typer.Option(Path("anomalens_out"), "--out", "-o", help="Output directory."),
    model: Path | None = typer.Option(
        None, "--model", help="A fitted model directory from `anomalens fit`, or a .onnx from `anomalens export`."
    ),
    threshold: str | None = typer.Option(
        None,
        "--threshold",
        help="Image threshold: a number, 'auto' (calibrated on the references, leave-one-out: "
        "quantile + margin * (quantile - median)), or 'none'. Default: auto with --refs (as `fit`), "
        "the model's with --model, none zero-shot.",
    ),
    map_format: str = typer.Option("npy", "--map-format", help="Raw map files: npy | tiff (32-bit float)."),
    batch_size: int = typer.Option(8, "--batch-size", min=1),
    jobs: int = typer.Option(
        2, "--jobs", "-j", min=0, help="Threads that read and decode images ahead of the model (0: none)."
    ),
    overwrite: o.Overwrite = False,
    report: bool = typer.Option(True, "--report/--no-report", help="Write report.html."),
    engine: str = typer.Option(
        "local", "--engine", help="local | ray (inputs may also be text files of paths or glob patterns)."
    ),
    ray_address: str | None = typer.Option(
        None, "--ray-address", help="Ray cluster: auto (running cluster) or ray://host:10001; default: local Ray."
    ),
    ray_actors: int = typer.Option(2, "--ray-actors", min=1, help="Scoring actors (each loads the model once)."),
    ray_cpus_per_actor: float = typer.Option(1.0, "--ray-cpus-per-actor", help="CPUs per actor (= its threads)."),
    ray_gpus_per_actor: float = typer.Option(0.0, "--ray-gpus-per-actor", help="GPUs per actor."),
    shard_size: int = typer.Option(1000, "--shard-size", min=1, help="Images per result shard (ray)."),
    ray_maps: bool = typer.Option(False, "--ray-maps", help="Also write maps and masks (ray; off: results only)."),
    ray_overlays: bool = typer.Option(False, "--ray-overlays", help="Also write overlays (ray)."),
    watch: bool = typer.Option(
        False, "--watch", help="Keep watching the folders and inspect new images as they arrive (Ctrl-C ends)."
    ),
    poll_seconds: float = typer.Option(2.0, "--poll-seconds", min=0.05, help="--watch: how often to look."),
    settle_seconds: float = typer.Option(
        1.0, "--settle-seconds", min=0.0, help="--watch: a file is read once unchanged this long."
    ),
    report_seconds: float = typer.Option(
        60.0, "--report-seconds", min=0.0, help="--watch: rewrite report.html at most this often (and at the end)."
    ),
) -> None:
    """Score images: results.jsonl/.csv, overlays, masks, raw maps and report.html under --out.

    With --engine ray: on a Ray cluster (or local Ray), results as Parquet + JSONL shards
    under --out/shards; see the README section "Scoring very large image sets".

    Re-running the same command resumes: images with results in --out are not done again
    (failed ones are retried); --overwrite starts afresh. Images above 16 megapixels are worked
    on (and their maps, masks and overlays written) at a reduced size; see anomalens.images.

    Exit code 0 when every image was processed, 1 when some failed (listed at the end), 2 for
    usage errors, 130 when interrupted (Ctrl-C; what was written is valid, run again to resume).
    """
    p, explicit = given_options(ctx)
    from ..inspection import check_options, collect_inputs, run

    out = Path(p["out"])
    check_options(p["map_format"], int(p["batch_size"]), int(p["jobs"]))
    threshold_value = parse_threshold(p["threshold"])
    if p.get("engine", "local") not in ("local", "ray"):
        fail(f"--engine must be 'local' or 'ray', got {p['engine']!r}")
    if p.get("watch"):
        return _watch(p, explicit, out, threshold_value)
    if p.get("engine") == "ray":
        # Inputs stay as given (folders, lists of paths, globs): the engine lists them lazily.
        if not p["images"]:
            fail("no images given")
        from .detect_ray import detect_with_ray

        det, _source = build_detector(p, explicit)
        set_threshold(det, p, explicit, threshold_value)
        detect_with_ray(det, p, explicit, [str(i) for i in p["images"]])
        return
    inputs = collect_inputs([Path(i) for i in p["images"] or []], out, log=echo)
    det, source = build_detector(p, explicit)
    if det.method_name == "patchknn" and not det.reference_paths and len(inputs.files) >= 2:
        echo(ZERO_SHOT_BATCH_NOTE.format(n=len(inputs.files)))
    _set_and_say_threshold(det, p, explicit, threshold_value)

    with ProgressBar(det.method_name) as bar:
        summary = run(
            det,
            inputs,
            out,
            overwrite=p["overwrite"],
            report=p["report"],
            progress=bar,
            log=echo,
            **_run_options(p, source),
        )
    if summary.report is not None:
        echo(f"report: {summary.report}")
    rate = f", {summary.scored / summary.seconds:.2f} images/s" if summary.scored and summary.seconds > 0 else ""
    echo(f"scored {summary.scored} images in {summary.seconds:.1f} s{rate}")
    print_summary(summary)
    if summary.interrupted:
        echo("interrupted: everything written so far is valid; run the same command again to resume")
    if summary.exit_code:
        raise typer.Exit(summary.exit_code)


def _run_options(p: dict, source: str) -> dict:
    """The options `inspection.run` takes from the command line, for a run and for a watch's runs."""
    return {
        "map_format": p["map_format"],
        "batch_size": int(p["batch_size"]),
        "jobs": int(p["jobs"]),
        "source": source,
        "options": p,
    }


def _set_and_say_threshold(det, p: dict, explicit: set, threshold_value) -> None:
    set_threshold(det, p, explicit, threshold_value)
    if det.threshold is not None:
        report_threshold(det.threshold, det.pixel_threshold)
    elif det.pixel_threshold is not None:
        echo(f"pixel threshold: {describe(det.pixel_threshold)}; no image threshold: no OK/NG decisions")
    else:
        echo("no threshold: scores and maps only (pass --threshold X or --threshold auto for OK/NG and masks)")


def _watch(p: dict, explicit: set, out: Path, threshold_value) -> None:
    """`detect --watch`: the hot folder (anomalens.watch); Ctrl-C or SIGTERM end it (exit 0, 1 if an image failed)."""
    from ..watch import watch

    if p.get("engine") == "ray":
        fail("--watch runs on this machine: leave out --engine ray")
    det, source = build_detector(p, explicit)
    _set_and_say_threshold(det, p, explicit, threshold_value)
    folders = ", ".join(map(str, p["images"] or []))
    echo(f"watching {folders} every {p['poll_seconds']:g} s (Ctrl-C ends); results in {out}")
    stop_on_sigterm()  # a service manager's stop ends the watch as Ctrl-C does: the report is written
    result = watch(
        det,
        [Path(i) for i in p["images"] or []],
        out,
        poll_seconds=float(p["poll_seconds"]),
        settle_seconds=float(p["settle_seconds"]),
        report_seconds=float(p["report_seconds"]),
        report=p["report"],
        overwrite=p["overwrite"],
        log=echo,
        **_run_options(p, source),
    )
    echo(f"watched {result.polls} times; scored {result.scored} images")
    if result.last is not None:
        if result.last.report is not None:
            echo(f"report: {result.last.report}")
        print_summary(result.last)
        if result.last.failures:  # as detect: 1 when an image failed
            raise typer.Exit(1)


def stop_on_sigterm() -> None:
    """SIGTERM (systemd, docker stop, kill) raises KeyboardInterrupt in the main thread, as Ctrl-C does."""
    import signal
    import threading

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, interrupt)


def print_summary(summary) -> None:
    """Counts over this run's inputs (resumed ones included) and the list of failures."""
    extra = f", no decision {summary.undecided}" if summary.undecided else ""
    count = f"{summary.done} images"
    if summary.done != summary.images:
        count = f"{summary.done} of {summary.images} images done"
    results = summary.out / "results.jsonl"
    echo(f"{count}: OK {summary.ok}, NG {summary.ng}{extra}, failed {summary.failed}; results in {results}")
    if summary.failures:
        echo(f"failures ({summary.failed}):")
        for r in summary.failures:
            echo(f"  {r['path']}: {r.get('error')}")


class ProgressBar:
    """A tqdm bar fed by `inspection.run`'s progress callback (hidden when stderr is no terminal)."""

    def __init__(self, desc: str):
        self.desc = desc
        self.bar = None

    def __call__(self, event) -> None:
        if self.bar is None:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=event.total, unit="img", desc=self.desc, disable=None, dynamic_ncols=True)
        self.bar.n = event.done
        self.bar.refresh()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.close()
