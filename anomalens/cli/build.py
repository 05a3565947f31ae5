"""From parsed options to a ready detector: method settings, --model / --refs, thresholds."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from ..errors import ImageLoadError, UsageError
from .app import echo, fail
from .config import parse_sets

# The options that are method settings; with --model they are the saved model's: a different
# value is refused (see model_overrides).
METHOD_OPTIONS = (
    "weights", "backbone", "category", "prompts", "checkpoint", "grounding", "image_size", "resize", "set_",
    "describe_",
)


def method_settings(method: str, flags: dict[str, Any], sets: dict[str, Any] | None = None) -> dict[str, Any]:
    """The settings for `method` from the shared flags and --set, checked (SettingsError if bad).

    The shared flags (--weights, --category, ...) exist for every method, so one the method
    does not have is ignored with a note; a --set name the method does not have is an error.
    """
    from ..methods import METHODS, load_method
    from ..settings import build_settings

    load_method(method)
    if method not in METHODS:
        fail(f"unknown method {method!r}; available: {', '.join(sorted(METHODS))}")
    known = {f.name for f in dataclasses.fields(METHODS[method].Settings)}
    settings = {k: v for k, v in flags.items() if v is not None and k in known}
    ignored = sorted(k for k, v in flags.items() if v is not None and k not in known)
    if ignored:
        echo(f"note: method {method!r} has no setting(s) {', '.join(ignored)}; ignored")
    settings |= sets or {}
    build_settings(METHODS[method].Settings, settings)  # fail here, before any model is loaded
    return settings


def flag_settings(p: dict[str, Any]) -> dict[str, Any]:
    """The method settings the shared flags of a command give (paths as strings)."""
    given = {k: p.get(k) for k in ("weights", "backbone", "category", "image_size", "resize")}
    for name in ("checkpoint", "grounding"):
        given[name] = str(p[name]) if p.get(name) else None
    given["prompts"] = prompt_files(p.get("prompts"))
    return given


def describe_if_asked(p: dict[str, Any]) -> None:
    """--describe: phrases from a language model for a --category the vocabulary lacks, added to
    p["set_"] as ``defects=[...]`` so settings.json records them and a repeat needs no model."""
    import json

    sets = parse_sets(list(p.get("set_") or []))
    if not p.get("describe_") or "defects" in sets:
        return
    from ..describe import make_backend
    from ..describe.for_run import defects_for_run

    defects = defects_for_run(
        p["method"],
        p.get("category"),
        lambda: make_backend(p.get("llm") or "embedded", p.get("llm_model"), log=echo),
        vocabulary=sets.get("vocabulary"),
        log=echo,
    )
    if defects:
        p["set_"] = [*(p.get("set_") or []), f"defects={json.dumps(defects)}"]


def prompt_files(paths) -> str | tuple[str, ...] | None:
    """--prompts given once: the file; several times: all of them, in order (duplicates kept)."""
    if not paths:
        return None
    if isinstance(paths, (str, Path)):
        return str(paths)
    files = tuple(str(p) for p in paths)
    return files[0] if len(files) == 1 else files


def image_reading(p: dict[str, Any], base=None):
    """The ImageReading of --bit-depth / --max-pixels; options not given keep `base`'s values."""
    from ..image_reading import ImageReading

    base = base or ImageReading()
    return ImageReading(
        base.bit_depth if p.get("bit_depth") is None else p["bit_depth"],
        base.max_pixels if p.get("max_pixels") is None else p["max_pixels"],
    )


def build_detector(p: dict[str, Any], explicit: set[str], progress=None, references: list[str] | None = None):
    """Load --model, or create the method and fit it on --refs (zero-shot without); + a source line.

    progress: a FitProgress callback for reading and fitting the references. references: image
    files to fit on instead of --refs (`fit --unlabeled`: the folder's most typical images)."""
    det, source = _build_detector(p, explicit, progress, references)
    if det.region is not None:  # the source line is what the report and settings.json show
        source += f"; inspection region: {det.region.share:.0%} of each image ({det.region.source or 'given'})"
    return det, source


def _build_detector(p: dict[str, Any], explicit: set[str], progress=None, references: list[str] | None = None):
    from ..detector import Detector, load_detector

    image_reading(p)  # a bad --bit-depth / --max-pixels fails before any model is loaded
    region = inspection_region(p)  # and so does a bad --region
    if p.get("model") is not None:
        if p.get("refs") is not None:
            fail(
                "--refs cannot be combined with --model: the model already holds its reference "
                "images; fit a new model (`anomalens fit`) to change them"
            )
        try:
            det = load_detector(p["model"], device=p.get("device", "auto"))
        except (ValueError, FileNotFoundError) as err:
            raise UsageError(str(err)) from err
        saved, det.reading = det.reading, image_reading(p, det.reading)
        if det.reading.bit_depth != saved.bit_depth:
            echo(f"note: --bit-depth {det.reading.bit_depth}; the model's references were read at {saved.bit_depth}")
        overridden = model_overrides(p, explicit, det, region)
        if overridden:
            fail(
                f"--model {p['model']} holds a fitted {det.method_name} model whose saved settings a run cannot "
                f"change; these options differ from them: {'; '.join(overridden)} (drop them, or fit a new "
                "model with `anomalens fit`)"
            )
        p["method"] = det.method_name  # so that settings.json records the model's method
        if det.region is not None:
            echo(f"inspection region: saved with the model ({det.region.share:.0%} of each image inspected)")
        n = len(det.reference_paths)
        how = f"fitted on {n} reference images" if n else "zero-shot"
        return det, f"model {p['model']} ({det.method_name}, {how})"
    describe_if_asked(p)
    settings = method_settings(p["method"], flag_settings(p), parse_sets(list(p.get("set_") or [])))
    reading = image_reading(p)
    try:
        det = Detector(method=p["method"], device=p.get("device", "auto"), reading=reading, region=region, **settings)
        if region is not None:
            echo(f"inspection region: {p['region']} ({region.share:.0%} of each image inspected)")
        if references is None and p.get("refs") is None:
            det.fit([])
            if (pseudo := det.method.describe_fit()) is not None:  # musc: the batch's pseudo-references
                echo(pseudo)
            return det, "zero-shot (no reference images)"
        origin = ""
        if references is None:
            refs = Path(p["refs"])
            if not refs.exists():
                fail(f"{refs}: reference folder does not exist")
            references, origin = [refs], f" from {refs}"
        det.fit(references, progress=progress)
        if (chosen := det.method.describe_fit()) is not None:  # e.g. the model side the references chose
            echo(chosen)
    except ImageLoadError as err:
        raise UsageError(f"cannot use the reference images: {err}") from err
    except UsageError:
        raise
    except (ValueError, FileNotFoundError) as err:
        raise UsageError(str(err)) from err
    return det, f"{len(det.reference_paths)} reference images{origin}"


def _json_value(value: Any) -> Any:
    import json

    return json.loads(json.dumps(value, default=str))


def model_overrides(p: dict[str, Any], explicit: set[str], det, region=None) -> list[str]:
    """The options given with --model that would change the saved model, each as
    "--name value (saved: value)"; options equal to the saved values are not listed."""
    found = []
    if "method" in explicit and p.get("method") != det.method_name:
        found.append(f"-m {p['method']} (saved: {det.method_name})")
    saved = _json_value(det.settings)
    given = {k: v for k, v in flag_settings(p).items() if v is not None and k in explicit}
    missing = "not a setting of this method"
    for name, value in given.items():
        if _json_value(value) != saved.get(name):
            found.append(f"--{name.replace('_', '-')} {value} (saved: {saved.get(name, missing)})")
    for name, value in parse_sets(list(p.get("set_") or [])).items():
        if _json_value(value) != saved.get(name):
            found.append(f"--set {name}={value} (saved: {saved.get(name, missing)})")
    if p.get("describe_") and "describe_" in explicit:
        found.append("--describe (the saved model's defect phrases are used)")
    if p.get("region") is not None:
        given = region or inspection_region(p)  # `region`: --region already read
        if det.region is None or given.digest != det.region.digest:
            saved = "none" if det.region is None else det.region.source or "another region"
            found.append(f"--region {p['region']} (saved: {saved})")
    return found


def inspection_region(p: dict[str, Any]):
    """The InspectionRegion of --region (None without it); a bad file is a usage error naming it."""
    if p.get("region") is None:
        return None
    from ..inspection_region import InspectionRegion

    try:
        return InspectionRegion.from_file(p["region"])
    except (ImageLoadError, ValueError) as err:
        raise UsageError(str(err)) from err


def default_threshold(p: dict[str, Any], value: str | float | None) -> str | float | None:
    """`fit` and `detect` agree: with reference images and no --threshold, the threshold is
    calibrated on them ("auto"); with --model, the model's; zero-shot without --threshold, none."""
    if value is None and p.get("model") is None and p.get("refs") is not None:
        return "auto"
    return value


def set_threshold(det, p: dict[str, Any], explicit: set[str], value: str | float | None, progress=None) -> None:
    """Apply --threshold / --pixel-threshold (a number, calibration from the references, or none)."""
    value = default_threshold(p, value)
    from ..calibration import Threshold

    from_model = p.get("model") is not None
    value = _target_options(p, explicit, value)
    if value == "none":
        det.threshold, det.pixel_threshold = None, None
    elif value == "auto" and from_model:
        saved = det.threshold
        if saved is None or saved.method != "auto":
            fail(f"{p['model']} holds no calibrated threshold; fit it with --threshold auto, or pass --threshold X")
        for name in ("quantile", "margin", "max_false_reject"):
            if name in explicit and getattr(saved, name) != p.get(name):
                fail(
                    f"{p['model']} was calibrated with {name} {getattr(saved, name)}, not {p[name]}: "
                    "calibration needs the references, so fit the model again to change it"
                )
    elif value == "auto":
        defects = p.get("defects")
        if defects is not None and not Path(defects).exists():
            fail(f"{defects}: known-defect folder does not exist")
        try:
            det.calibrate(
                quantile=p["quantile"],
                margin=p["margin"],
                pixel_threshold=p["pixel_threshold"],
                max_false_reject=p.get("max_false_reject"),
                defects=None if defects is None else [defects],
                progress=progress,
            )
        except ImageLoadError as err:
            raise UsageError(f"cannot use the known-defect images: {err}") from err
        except ValueError as err:
            if explicit & {"threshold", "max_false_reject", "defects"}:
                raise UsageError(str(err)) from err
            # The default (auto with references) cannot work here, e.g. with one reference image.
            echo(f"note: no threshold: the default --threshold auto cannot be calibrated ({err})")
            det.threshold, det.pixel_threshold = None, None
    elif value is not None:
        det.threshold = Threshold.given(float(value))
        det.pixel_threshold = float(value)
    if p.get("pixel_threshold") is not None:
        det.pixel_threshold = float(p["pixel_threshold"])


def _target_options(p: dict[str, Any], explicit: set[str], value: str | float | None) -> str | float | None:
    """Check --max-false-reject / --defects against the other threshold options; they imply auto."""
    target, defects = p.get("max_false_reject"), p.get("defects")
    if target is None and defects is None:
        return value
    given = "--max-false-reject" if target is not None else "--defects"
    if value not in (None, "auto"):
        fail(f"{given} calibrates the threshold; it cannot be combined with --threshold {value}")
    if target is not None and "margin" in explicit:
        fail("--margin belongs to the --quantile rule; --max-false-reject takes the order statistic as it is")
    if target is not None and "quantile" in explicit:
        fail("give either --quantile or --max-false-reject, not both")
    if defects is not None and p.get("model") is not None:
        fail("--defects needs the references to calibrate; fit the model again with --defects")
    return "auto"


def report_threshold(threshold, pixel_threshold=None) -> None:
    """Print how the thresholds were set, their stated rates and any warning."""
    echo(f"threshold: {describe(threshold)}")
    if threshold is not None and getattr(threshold, "warning", ""):
        echo(f"warning: {threshold.warning}")
    if threshold is not None:
        echo(f"pixel threshold: {describe(pixel_threshold)}")


def describe(threshold) -> str:
    """"none", or how the threshold was set ("given: 0.42", "auto: 99th percentile of ...")."""
    return "none" if threshold is None else threshold.description()
