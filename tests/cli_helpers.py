"""The command line in-process for tests: `run` invokes `anomalens` through typer's CliRunner."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from anomalens.cli import app


def run(args: list, code: int = 0):
    """`anomalens *args` (each argument as a string); asserts the exit code and returns the result."""
    result = CliRunner().invoke(app, [str(a) for a in args])
    assert result.exit_code == code, f"exit {result.exit_code}, expected {code}\n{result.output}\n{result.exception!r}"
    return result


def assert_musc_run_resumes_identically(tmp_path, settings: list[str], defect: int) -> Path:
    """`anomalens detect` with musc and `--set` `settings` on 16 planted images (image `defect` defective, named
    bad_NN.png): finds it, and a run cut after 5 images resumes to the same scores. Returns the output folder."""
    import pytest
    from PIL import Image
    from synthetic import planted_batch

    from anomalens.outputs import read_records

    root = tmp_path / "line"
    root.mkdir()
    for k, img in enumerate(planted_batch(range(16), defect=defect)):
        Image.fromarray(img.rgb).save(root / f"{'bad' if k == defect else 'ok'}_{k:02d}.png")
    out = tmp_path / "out"
    args = ["detect", root, "--out", out, "--method", "musc", "--image-size", "64", "--jobs", "0"]
    args += ["--set", "progress=false"] + [a for setting in settings for a in ("--set", setting)]
    run(args)

    def scores() -> dict[str, float]:
        return {Path(r["path"]).name: r["score"] for r in read_records(out) if r.get("status") == "ok"}

    before = scores()
    assert max(before, key=before.get) == f"bad_{defect:02d}.png"
    jsonl = out / "results.jsonl"
    jsonl.write_text("\n".join(jsonl.read_text().splitlines()[:5]) + "\n")  # interrupted after 5 images
    run(args)
    after = scores()
    assert after.keys() == before.keys()
    for name, value in before.items():
        assert after[name] == pytest.approx(value, abs=1e-6)
    return out
