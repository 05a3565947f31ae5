"""The Ray engine on a local Ray instance (shared by this module): same scores as the local
path, the results schema, bad images recorded, resume from written shards, a crashed actor
retried; and the input listing (folders, lists of paths, globs) without Ray."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ray = pytest.importorskip("ray")
pq = pytest.importorskip("pyarrow.parquet")

from anomalens.calibration import Threshold  # noqa: E402
from anomalens.detector import Detector, load_detector  # noqa: E402
from anomalens.engines import listing, shards  # noqa: E402
from anomalens.engines.ray import ShardScorer, score_with_ray  # noqa: E402
from anomalens.export.graph import synthetic_image  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def local_ray():
    # A shared 2-core test machine: Ray's memory monitor would kill workers for other
    # processes' memory, so it is off for this small local instance.
    os.environ["RAY_memory_monitor_refresh_ms"] = "0"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("ray")
    (root / "images" / "b").mkdir(parents=True)
    for i in range(3):
        Image.fromarray(synthetic_image(60, 72, seed=i)).save(root / "images" / f"a{i}.png")
    for i in range(2):
        Image.fromarray(synthetic_image(48, 64, seed=10 + i)).save(root / "images" / "b" / f"c{i}.png")
    (root / "images" / "broken.png").write_bytes(b"not an image")
    det = Detector("patchknn", image_size=64).fit([root / "images" / "a0.png", root / "images" / "a1.png"])
    det.threshold, det.pixel_threshold = Threshold.given(0.05), 0.05
    det.save(root / "model")
    return root


def by_path(records: list[dict]) -> dict[str, dict]:
    return {r["path"]: r for r in records}


def test_listing_reads_folders_lists_of_paths_and_globs(data, tmp_path):
    images = data / "images"
    (tmp_path / "list.txt").write_text(f"# comment\n{images / 'a0.png'}\nrelative.png\n\n")
    inputs = [str(images / "b"), str(tmp_path / "list.txt"), str(images / "a*.png"), str(images / "gone.png")]
    got = list(listing.iter_paths(inputs))
    assert got[:4] == [
        str(images / "b" / "c0.png"), str(images / "b" / "c1.png"),
        str(images / "a0.png"), str(tmp_path / "relative.png"),
    ]
    assert sorted(got[4:7]) == sorted(str(p) for p in images.glob("a*.png"))  # glob order is the file system's
    assert got[7:] == [str(images / "gone.png")]
    out = tmp_path / "out"
    found, total = listing.build_listing(inputs, out, shard_size=3)
    assert total == len(got) and [s.count for s in found] == [3, 3, 2]
    assert [p for s in found for p in listing.read_shard(out / "_inputs" / "paths.txt", s.offset, s.count)] == got
    with pytest.raises(ValueError, match="other inputs"):
        listing.build_listing(inputs[:1], out, shard_size=3)


def test_ray_gives_the_local_scores_schema_and_error_records(local_ray, data, tmp_path):
    out = tmp_path / "out"
    summary = score_with_ray([data / "images"], out, data / "model", shard_size=2, actors=1)
    assert (summary.total, summary.ok, summary.failed) == (6, 5, 1)
    assert summary.shards_done_now == 3 and summary.shards_skipped == 0
    results = by_path(shards.read_results(out))
    local = load_detector(data / "model")
    paths = [p for p in results if results[p]["status"] == "ok"]
    for expected in local.predict(paths):
        got = results[str(expected.path)]
        assert got["score"] == pytest.approx(expected.score, abs=1e-6)
        assert got["decision"] == expected.decision and got["threshold"] == pytest.approx(0.05)
        assert got["map_size"] == list(expected.anomaly_map.shape)
    broken = results[str(data / "images" / "broken.png")]
    assert broken["status"] == "error" and "not an image file" in broken["error"] and broken["score"] is None
    # Same columns as results.jsonl, in Parquet and in the JSONL shard beside it.
    table = pq.read_table(out / "shards" / "part-000000.parquet")
    assert tuple(table.schema.names) == shards.COLUMNS
    jsonl = [json.loads(line) for line in (out / "shards" / "part-000000.jsonl").read_text().splitlines()]
    assert jsonl == table.to_pylist()


def test_resume_redoes_only_missing_shards(local_ray, data, tmp_path):
    out = tmp_path / "out"
    score_with_ray([data / "images"], out, data / "model", shard_size=2, actors=1)
    kept = out / "shards" / "part-000000.parquet"
    before = kept.stat().st_mtime_ns
    (out / "shards" / "part-000001.parquet").unlink()  # as if the job stopped before writing it
    summary = score_with_ray([data / "images"], out, data / "model", shard_size=2, actors=1)
    assert summary.shards_done_now == 1 and summary.shards_skipped == 2
    assert kept.stat().st_mtime_ns == before
    paths = [r["path"] for r in shards.read_results(out)]
    assert len(paths) == len(set(paths)) == 6
    other = Detector("patchknn", image_size=64).fit([data / "images" / "a2.png"])
    other.save(tmp_path / "other")
    with pytest.raises(ValueError, match="another model"):
        score_with_ray([data / "images"], out, tmp_path / "other", shard_size=2)


class CrashOnce(ShardScorer):
    """Kills its own process on the first shard it gets (once per job, marked by a file)."""

    def __call__(self, batch):
        marker = self.out / "crashed"
        if not marker.exists():
            marker.write_text("1")
            os._exit(1)
        return super().__call__(batch)


def test_a_crashed_actor_is_restarted_and_its_shard_retried(local_ray, data, tmp_path):
    from ray import cloudpickle

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import tests/
    out = tmp_path / "out"
    summary = score_with_ray(
        [data / "images"], out, data / "model", shard_size=3, actors=1, actor_retries=2, actor_cls=CrashOnce
    )
    assert (out / "crashed").exists()
    assert (summary.ok, summary.failed) == (5, 1)
    paths = [r["path"] for r in shards.read_results(out)]
    assert len(paths) == len(set(paths)) == 6


def test_cli_detect_engine_ray_with_an_exported_model(local_ray, data, tmp_path):
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from anomalens.cli import app
    from anomalens.export import export_onnx

    export_onnx(load_detector(data / "model"), tmp_path / "m.onnx", verify=False)
    listed = tmp_path / "paths.txt"
    listed.write_text("\n".join(str(p) for p in sorted((data / "images").glob("*.png"))))
    args = ["detect", listed, "--model", tmp_path / "m.onnx", "--engine", "ray", "--out", tmp_path / "out",
            "--shard-size", "2", "--ray-actors", "1", "--ray-maps"]
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == 1, result.output  # one broken image
    assert "4 of 4 images" in result.output and "failed 1" in result.output and "broken.png" in result.output
    records = shards.read_results(tmp_path / "out")
    ok = [r for r in records if r["status"] == "ok"]
    assert len(ok) == 3 and all((tmp_path / "out" / r["map"]).exists() for r in ok)
    local = by_path([r.to_record() | {"path": str(r.path)} for r in load_detector(data / "model").predict(
        [r["path"] for r in ok])])
    for r in ok:
        assert abs(r["score"] - local[r["path"]]["score"]) <= 1e-4
        assert np.load(tmp_path / "out" / r["map"]).dtype == np.float32


@pytest.mark.parametrize("kind", ["dir", "onnx"])
def test_an_actor_scores_from_its_copy_of_the_model_and_leaves_no_copy_behind(data, tmp_path, monkeypatch, kind):
    from anomalens.engines import ray as engine

    model = data / "model"
    if kind == "onnx":
        pytest.importorskip("onnxruntime")
        from anomalens.export import export_onnx

        model = tmp_path / "m.onnx"
        export_onnx(load_detector(data / "model"), model, verify=False)
    payload = engine.model_payload(model)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(engine.tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(ray, "get", lambda value: value)  # the payload itself, not an object-store reference
    options = {"threads": 1, "batch_size": 1, "jobs": 1, "write_maps": False, "write_overlays": False}
    scorer = ShardScorer([payload], str(tmp_path / "out"), "keep", "keep", options)
    assert list(scratch.iterdir()) == []  # removed once loaded
    image = str(data / "images" / "a2.png")
    record = scorer.score_shard([image])[0]
    expected = load_detector(data / "model").predict([image])[0].score
    assert record["status"] == "ok" and abs(record["score"] - expected) <= 1e-4
