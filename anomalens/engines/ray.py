"""Scoring very large image sets on Ray (optional extra `ray`).

    from anomalens.engines.ray import score_with_ray
    summary = score_with_ray(["/archive/2026/"], "scores/", model="models/part42", address="auto")

How it runs:

1. The input list is streamed to `<out>/_inputs/paths.txt` and cut into shards (`listing`).
2. The saved model (a `Detector.save` directory or an exported .onnx with its bank file) is read
   once on the driver and put in Ray's object store; that is how it travels to the workers.
3. A Ray Dataset over the unfinished shards goes through `map_batches` with a fixed pool of
   actors (`ShardScorer`); each actor writes the model to a temporary folder and loads it once,
   then for each shard it is given reads the shard's paths, decodes and scores the images
   (a bad image becomes an "error" record, as in the local loop) and writes the shard's Parquet
   and JSONL files (`shards`). Actors that die are restarted and their shard retried
   (`actor_retries`); a shard is only ever written whole, so a retry cannot duplicate results.
4. Re-running the same job skips the shards already written.

Workers need: this package (with the model's method), read access to the input paths, write
access to `out` (a shared file system), and for CLIP methods saved as directories the CLIP
weights at the path the model names; an exported .onnx model needs no weights at all.
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
import warnings
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..results_table import image_fields
from . import listing, shards

JOB_FILE = "job.json"


@dataclass
class RaySummary:
    out: Path
    total: int
    ok: int
    failed: int
    decisions: dict[str, int]
    shards_done_now: int
    shards_skipped: int  # already written by an earlier run
    seconds: float
    images_per_second: float
    actor_peak_rss_mb: dict[str, float] = field(default_factory=dict)  # per actor process (pid)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (path, error), at most 100


# ---- the model, as bytes ----------------------------------------------------------------------


def model_payload(model: str | os.PathLike) -> dict[str, Any]:
    """The saved model's files as bytes: {"kind": "dir" | "onnx", "files": {name: bytes}}."""
    model = Path(model)
    if model.suffix.lower() == ".onnx":
        from ..export.runner import load_onnx_detector

        exported = load_onnx_detector(model)  # refuses corrupt files here, not on every worker
        files = {model.name: model.read_bytes()}
        bank = (exported.meta.get("memory_bank") or {}).get("file")
        if bank:
            files[bank] = (model.parent / bank).read_bytes()
        return {"kind": "onnx", "main": model.name, "files": files}
    if not (model / "detector.json").exists():
        raise FileNotFoundError(f"{model} is not a saved anomalens model (no detector.json) nor a .onnx file")
    files = {p.name: p.read_bytes() for p in model.iterdir() if p.is_file()}
    return {"kind": "dir", "main": "", "files": files}


def _fingerprint(payload: dict[str, Any], overrides: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for name in sorted(payload["files"]):
        h.update(name.encode())
        h.update(hashlib.sha256(payload["files"][name]).digest())
    h.update(json.dumps(overrides, sort_keys=True, default=str).encode())
    return h.hexdigest()[:16]


def _load_payload(payload: dict[str, Any], folder: Path):
    from ..detector import load_detector

    for name, data in payload["files"].items():
        (folder / name).write_bytes(data)
    return load_detector(folder / payload["main"] if payload["kind"] == "onnx" else folder)


# ---- the actor ---------------------------------------------------------------------------------


def _remove_when_loaded(owner: object, folder: Path) -> None:
    """Remove an actor's copy of the model, so that actors leave nothing in the temporary folder.

    A loaded model holds its weights in memory; an ONNX model's bank is memory-mapped, which on
    POSIX stays readable after its file is removed. Elsewhere the folder goes with the actor.
    """
    if os.name == "posix":
        shutil.rmtree(folder, ignore_errors=True)
    else:
        weakref.finalize(owner, shutil.rmtree, folder, True)


def _failure(path: str, reason: str) -> dict[str, Any]:
    return shards.complete_record({"path": path, "descriptions": [], "status": "error", "error": reason})


class ShardScorer:
    """A Ray Data actor: loads the model once, then scores whole shards and writes them."""

    def __init__(self, payload_ref: list, out: str, threshold: Any, pixel_threshold: Any, options: dict[str, Any]):
        import ray
        import torch

        self.options = options
        torch.set_num_threads(max(1, int(options.get("threads", 1))))
        payload = ray.get(payload_ref[0])
        folder = Path(tempfile.mkdtemp(prefix="anomalens-model-"))
        try:
            self.detector = _load_payload(payload, folder)
        finally:
            _remove_when_loaded(self, folder)
        if threshold != "keep":  # saved dicts become Thresholds through the detector's setters
            self.detector.threshold = threshold
            self.detector.pixel_threshold = pixel_threshold
        self.out = Path(out)
        self.paths_file = self.out / listing.INPUTS_DIR / "paths.txt"
        self._writer = None

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        summary: dict[str, list] = {"shard": [], "ok": [], "failed": [], "seconds": [], "pid": [], "peak_rss_mb": []}
        for index, offset, count in zip(batch["shard"], batch["offset"], batch["count"]):
            start = time.perf_counter()
            records = self.score_shard(listing.read_shard(self.paths_file, int(offset), int(count)))
            shards.write_shard(self.out, int(index), records)
            ok = sum(r["status"] == "ok" for r in records)
            summary["shard"].append(int(index))
            summary["ok"].append(ok)
            summary["failed"].append(len(records) - ok)
            summary["seconds"].append(time.perf_counter() - start)
            summary["pid"].append(os.getpid())
            summary["peak_rss_mb"].append(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        return summary

    def score_shard(self, paths: list[str]) -> list[dict[str, Any]]:
        from ..images import ImageLoadError

        det, o = self.detector, self.options
        records = []
        missing = [p for p in paths if not os.path.exists(p)]
        missing_set = set(missing)
        todo = [p for p in paths if p not in missing_set]
        by_path = {p: _failure(p, "file does not exist") for p in missing}
        for item in det.predict_iter(
            todo, batch_size=o["batch_size"], jobs=o["jobs"], with_images=True, skip_errors=True
        ):
            if isinstance(item, ImageLoadError):
                by_path[item.path] = _failure(item.path, item.reason)
                continue
            result, img = item
            try:
                files = self._write_files(result, img.rgb)
                fields = {**result.to_record(), **image_fields(img), **files, "status": "ok"}
                by_path[result.path] = shards.complete_record(fields)
            except Exception as err:
                by_path[result.path] = _failure(result.path, f"could not write outputs: {type(err).__name__}: {err}")
        for p in paths:  # shard order, whatever order results came in
            records.append(by_path.get(p) or _failure(p, "not scored"))
        return records

    def _write_files(self, result, rgb: np.ndarray) -> dict[str, str | None]:
        """Maps, masks and overlays, when asked for (off by default: millions of files)."""
        from ..outputs import _save_npy, _save_png, _save_tiff, atomic_write, output_name
        from ..overlay import heatmap_overlay, mask_image

        o = self.options
        rel: dict[str, str | None] = {"overlay": None, "mask": None, "map": None}
        if not (o["write_maps"] or o["write_overlays"]):
            return rel
        name = output_name(result.path)
        amap = np.ascontiguousarray(result.anomaly_map, dtype=np.float32)
        if o["write_maps"]:
            rel["map"] = f"maps/{name}.{o['map_format']}"
            (self.out / "maps").mkdir(exist_ok=True)
            atomic_write(self.out / rel["map"], (_save_npy if o["map_format"] == "npy" else _save_tiff)(amap))
            if result.mask is not None:
                rel["mask"] = f"masks/{name}.png"
                (self.out / "masks").mkdir(exist_ok=True)
                atomic_write(self.out / rel["mask"], _save_png(mask_image(result.mask)))
        if o["write_overlays"]:
            rel["overlay"] = f"overlays/{name}.png"
            (self.out / "overlays").mkdir(exist_ok=True)
            if getattr(self, "_scale", None) is None:  # one scale for the job (every actor computes the same)
                from ..colour_scale import scale_for_run

                self._scale = scale_for_run(self.detector)
            from ..colour_scale import with_colour_bar

            ignored = None if result.inspected is None else ~result.inspected
            over = heatmap_overlay(rgb, amap, result.mask, scale=self._scale, ignored=ignored)
            over = with_colour_bar(over, self._scale)
            atomic_write(self.out / rel["overlay"], _save_png(over))
        return rel


# ---- the driver --------------------------------------------------------------------------------


def _threshold_json(value: Any) -> Any:
    return value.to_dict() if hasattr(value, "to_dict") else value


def _prepare_out(out: Path, fingerprint: str, overwrite: bool) -> None:
    job_file = out / listing.INPUTS_DIR / JOB_FILE
    if overwrite:
        for sub in (listing.INPUTS_DIR, shards.SHARDS_DIR, "maps", "masks", "overlays"):
            shutil.rmtree(out / sub, ignore_errors=True)
    elif job_file.exists():
        previous = json.loads(job_file.read_text()).get("model_fingerprint")
        if previous != fingerprint:
            raise ValueError(
                f"{out} holds results of a job with another model or threshold; "
                "use another --out or pass --overwrite to start afresh"
            )
    (out / listing.INPUTS_DIR).mkdir(parents=True, exist_ok=True)
    job_file.write_text(json.dumps({"model_fingerprint": fingerprint}))


def score_with_ray(
    inputs: list[str | os.PathLike],
    out: str | os.PathLike,
    model: str | os.PathLike,
    *,
    threshold: Any = "keep",
    pixel_threshold: Any = None,
    address: str | None = None,
    actors: int = 2,
    cpus_per_actor: float = 1,
    gpus_per_actor: float = 0,
    shard_size: int = 1000,
    batch_size: int = 8,
    jobs: int = 1,
    write_maps: bool = False,
    write_overlays: bool = False,
    map_format: str = "npy",
    actor_retries: int = 3,
    overwrite: bool = False,
    progress: Callable[[int, int], None] | None = None,
    actor_cls: type = ShardScorer,
) -> RaySummary:
    """Score every input with a saved model on Ray; results as shards under `out` (see module doc).

    threshold: "keep" (the model's) or a calibration.Threshold / None to replace it (then
    pixel_threshold too). address: None starts or joins a local Ray, "auto" joins a running
    cluster, "ray://host:10001" connects a Ray client. progress(images_done, images_total) is
    called after each shard.
    """
    import ray

    if map_format not in ("npy", "tiff"):
        raise ValueError(f"map_format must be 'npy' or 'tiff', got {map_format!r}")
    if actors < 1 or batch_size < 1:
        raise ValueError("actors and batch_size must be >= 1")
    out = Path(out)
    start = time.perf_counter()
    payload = model_payload(model)
    overrides = {"threshold": _threshold_json(threshold), "pixel_threshold": _threshold_json(pixel_threshold)}
    _prepare_out(out, _fingerprint(payload, overrides), overwrite)
    all_shards, total = listing.build_listing([str(i) for i in inputs], out, shard_size)
    todo = [s for s in all_shards if not shards.is_done(out, s.index)]
    skipped = len(all_shards) - len(todo)
    peak: dict[str, float] = {}
    done_images = sum(s.count for s in all_shards if shards.is_done(out, s.index))
    if todo:
        if not ray.is_initialized():
            ray.init(address=address, log_to_driver=False, include_dashboard=False)
        payload_ref = [ray.put(payload)]
        options = {
            "threads": max(1, int(cpus_per_actor)),
            "batch_size": batch_size,
            "jobs": jobs,
            "write_maps": write_maps,
            "write_overlays": write_overlays,
            "map_format": map_format,
        }
        items = [{"shard": s.index, "offset": s.offset, "count": s.count} for s in todo]
        dataset = ray.data.from_items(items, override_num_blocks=min(len(items), 4 * actors) or 1)
        with warnings.catch_warnings():
            # Actor restarts have no named map_batches parameter yet (Ray 2.60 warns about the
            # generic remote-args form); without them Ray Data restarts actors forever.
            warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
            scored = _pool(
                dataset,
                actor_cls,
                actors,
                cpus_per_actor,
                gpus_per_actor,
                actor_retries,
                {
                    "payload_ref": payload_ref,
                    "out": str(out.resolve()),
                    "threshold": overrides["threshold"] if threshold != "keep" else "keep",
                    "pixel_threshold": overrides["pixel_threshold"],
                    "options": options,
                },
            )
        counts = {s.index: s.count for s in todo}
        for row in scored.iter_rows():
            done_images += counts[int(row["shard"])]
            pid = str(row["pid"])
            peak[pid] = max(peak.get(pid, 0.0), float(row["peak_rss_mb"]))
            if progress:
                progress(done_images, total)
    return _summarise(out, total, len(todo), skipped, time.perf_counter() - start, peak)


def _pool(dataset, actor_cls, actors, cpus, gpus, retries, constructor_kwargs):
    """Shards -> a fixed pool of scoring actors, one shard per call, restarted on failure."""
    return dataset.map_batches(
        actor_cls,
        batch_size=1,
        concurrency=actors,
        num_cpus=cpus,
        num_gpus=gpus or None,
        fn_constructor_kwargs=constructor_kwargs,
        max_restarts=retries,
        max_task_retries=retries,
    )


def _summarise(out: Path, total: int, now: int, skipped: int, seconds: float, peak: dict) -> RaySummary:
    import pyarrow.parquet as pq

    ok = failed = 0
    decisions: dict[str, int] = {}
    failures: list[tuple[str, str]] = []
    for file in sorted((out / shards.SHARDS_DIR).glob("part-*.parquet")):
        table = pq.read_table(file, columns=["path", "status", "decision", "error"]).to_pydict()
        for path, status, decision, error in zip(table["path"], table["status"], table["decision"], table["error"]):
            if status == "ok":
                ok += 1
                key = decision or "none"
                decisions[key] = decisions.get(key, 0) + 1
            else:
                failed += 1
                if len(failures) < 100:
                    failures.append((path, error))
    rate = (ok + failed) / seconds if now and seconds > 0 else 0.0
    return RaySummary(out, total, ok, failed, decisions, now, skipped, seconds, rate, peak, failures)
