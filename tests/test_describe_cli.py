"""`anomalens describe` and `detect --describe` through typer's CliRunner, against the local stub endpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import run
from describe_stub import Stub
from PIL import Image

from anomalens.text.prompts import load_defect_vocabulary, load_ensemble

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def stub():
    server = Stub()
    yield server
    server.close()


def test_describe_writes_merges_and_never_clobbers(stub, tmp_path):
    out = tmp_path / "vocabulary.json"
    stub.answer(json.dumps({"defects": ["Worn ball track", "pitted nut", "ball screw drive"]}))
    stub.answer(json.dumps({"defects": ["bent pallet board", "missing block", "Wooden pallet"]}))
    res = run(["describe", "ball screw drive", "wooden_pallet", "--n", "2", "--llm", stub.url, "--out", out])
    assert "ball screw drive: worn ball track; pitted nut" in res.output
    assert "dropped 'ball screw drive' (category name)" in res.output
    assert "dropped 'Wooden pallet' (category name)" in res.output
    assert load_defect_vocabulary(out).categories == {
        "ball screw drive": ["worn ball track", "pitted nut"],
        "wooden_pallet": ["bent pallet board", "missing block"],
    }
    before = out.read_text()
    res = run(["describe", "gear", "--llm", stub.url, "--out", out], code=2)
    assert "--merge" in res.output and out.read_text() == before and len(stub.requests) == 2

    # --merge: the user's entries stay, near-duplicates of them are not added.
    data = json.loads(before)
    data["categories"]["ball screw drive"].insert(0, "my own flaw")
    out.write_text(json.dumps(data))
    stub.answer(json.dumps({"defects": ["worn ball tracks", "cracked seal"]}))
    stub.answer(json.dumps({"defects": []}))
    stub.answer(json.dumps({"defects": []}))
    run(["describe", "ball screw drive", "--n", "2", "--llm", stub.url, "--out", out, "--merge"])
    merged = load_defect_vocabulary(out).categories
    assert merged["ball screw drive"] == ["my own flaw", "worn ball track", "pitted nut", "cracked seal"]
    assert merged["wooden_pallet"] == ["bent pallet board", "missing block"]
    # asked again twice (only one new phrase survived), got nothing more, wrote what it had
    assert len(stub.requests) == 5

    run(["describe", "x", "--out", out, "--merge", "--overwrite"], code=2)
    stub.script.clear()
    stub.answer(json.dumps({"defects": ["dent"]}))
    run(["describe", "can", "--n", "1", "--llm", stub.url, "--out", out, "--overwrite"])
    assert load_defect_vocabulary(out).categories == {"can": ["dent"]}


def test_describe_reports_a_dead_endpoint_and_writes_nothing(tmp_path):
    out = tmp_path / "v.json"
    res = run(["describe", "can", "--llm", "http://127.0.0.1:9/v1", "--timeout", "1", "--out", out], code=1)
    assert "cannot connect" in res.output and not out.exists()


def test_ensemble_through_the_endpoint(stub, tmp_path):
    out = tmp_path / "ensemble.json"
    stub.answer(json.dumps({"sentences": ["A photo of a cracked part.", "a photo of a bottle with a chip."]}))
    stub.answer(json.dumps({"sentences": ["a close-up of a dented surface.", "an inspection photo of a torn seal."]}))
    res = run(["describe", "--ensemble", "abnormal", "--n", "3", "--llm", stub.url, "--out", out])
    assert "wrote 3 abnormal sentences" in res.output and "names a specific object" in res.output
    ens = load_ensemble(out)
    assert ens.anomalous == [
        "a photo of a cracked part.",
        "a close-up of a dented surface.",
        "an inspection photo of a torn seal.",
    ]
    assert (
        "abnormal" in stub.requests[0]["body"]["messages"][-1]["content"]
        or "defective" in (stub.requests[0]["body"]["messages"][-1]["content"])
    )


def test_ensemble_needs_an_endpoint(tmp_path):
    res = run(["describe", "--ensemble", "normal", "--out", tmp_path / "e.json"], code=2)
    assert "too small" in res.output
    run(["describe", "--ensemble", "odd"], code=2)
    run(["describe", "screw", "--ensemble", "normal", "--llm", "http://127.0.0.1:9/v1"], code=2)
    run(["describe"], code=2)


def test_detect_describe_records_the_list_and_repeats_without_the_model(stub, tmp_path):
    img = tmp_path / "img.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(img)
    stub.answer(json.dumps({"defects": ["worn ball track", "pitted nut", "cracked seal"]}))
    stub.answer("[]")  # asked for 8: two more requests, nothing more
    stub.answer('{"defects": ["pitted nuts"]}')
    out = tmp_path / "out"
    common = ["--method", "winclip", "--backbone", "test-tiny", "--image-size", "48", "--weights", "random",
              "--no-report"]  # fmt: skip
    res = run(["detect", img, *common, "--category", "ball screw drive", "--describe", "--llm", stub.url,
               "--out", out])  # fmt: skip
    assert "described 'ball screw drive'" in res.output
    settings = json.loads((out / "settings.json").read_text())
    phrases = ["worn ball track", "pitted nut", "cracked seal"]
    assert settings["settings"]["defects"] == phrases
    assert f"defects={json.dumps(phrases)}" in settings["options"]["set_"]
    assert len(stub.requests) == 3

    run(["detect", img, "--config", out / "settings.json", "--out", tmp_path / "again"])
    again = json.loads((tmp_path / "again" / "settings.json").read_text())
    assert again["settings"]["defects"] == phrases and len(stub.requests) == 3  # no new request

    # A category the vocabulary covers needs no model.
    res = run(["detect", img, *common, "--category", "screw", "--describe", "--llm", stub.url,
               "--out", tmp_path / "screw"])  # fmt: skip
    assert "--describe not needed" in res.output and len(stub.requests) == 3
    res = run(["detect", img, "--method", "patchknn", "--describe", "--out", tmp_path / "p"], code=2)
    assert "text methods" in res.output
