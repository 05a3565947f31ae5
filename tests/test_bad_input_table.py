"""Issue 12, every item as one row: what is wrong, the input (built in a temporary folder), the
command, the exit code and a fragment of the message. A reader can scan `CASES` as the overview;
the deeper tests of each item stay beside the code they test (test_image_reading, test_records,
test_model_integrity, test_torchscript_reader, test_resume_settings, test_fail_closed, ...).
Ctrl-C during start-up needs a real signal in a real process: tests/test_interrupt.py.

Exit codes: 0 all done, 1 some images failed (named, the batch goes on), 2 refused (one line).
"""

from __future__ import annotations

import json
import os
import pickle
import struct
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from anomalens.cli import app
from anomalens.records import lock_output_dir

pytestmark = pytest.mark.usefixtures("one_torch_thread")
FAST = ["--image-size", "64", "--jobs", "0", "--no-report"]


@dataclass
class Given:
    """What a row's builder gets: a fresh folder, shared good images and a fitted model."""

    tmp: Path
    refs: Path
    query: Path
    model: Path
    monkeypatch: pytest.MonkeyPatch


@dataclass
class Case:
    item: str  # the item number
    case: str  # what is wrong with the input
    build: Callable[[Given], list]  # makes the input, returns the command's arguments
    exit: int
    message: str  # a fragment of the output
    then: Callable[[Given], None] | None = None  # a further check on the files, when it matters


# ---- small builders -----------------------------------------------------------------------------


def texture(seed: int, size: int = 48) -> np.ndarray:
    return np.random.default_rng(seed).integers(90, 160, (size, size, 3), dtype=np.uint8)


def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png(width: int, height: int, idat: bytes, bits: int = 8, colour: int = 0, extra: bytes = b"") -> bytes:
    header = struct.pack(">IIBBBBB", width, height, bits, colour, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + extra + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def bomb(g: Given) -> Path:
    """28000 x 28000 zeros: 0.8 MB on disk, 784 MB decoded."""
    packer, row = zlib.compressobj(9), b"\x00" * 28001
    idat = b"".join(packer.compress(row * 140) for _ in range(200)) + packer.flush()
    path = g.tmp / "bomb.png"
    path.write_bytes(png(28000, 28000, idat))
    return path


def twelve_bit_good_part(g: Given) -> list:
    """Grey references, and one of them as a camera writes it: 12-bit values, sBIT 12, 16-bit PNG."""
    refs = g.tmp / "grey_refs"
    refs.mkdir()
    for i in range(3):
        Image.fromarray(texture(i)[..., 0]).save(refs / f"g{i}.png")
    deep = np.rint(texture(0)[..., 0].astype(np.float64) * 4095 / 255).astype(np.uint16)
    Image.fromarray(deep).save(g.tmp / "deep.png")
    data = (g.tmp / "deep.png").read_bytes()
    cut = 8 + 25  # after IHDR: the camera's sBIT chunk, 12 significant bits
    (g.tmp / "deep.png").write_bytes(data[:cut] + chunk(b"sBIT", b"\x0c") + data[cut:])
    return ["detect", g.tmp / "deep.png", "--refs", refs, "--threshold", "auto", "--out", g.tmp / "out"]


class _Payload:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return (os.system, (self.command,))


def evil_torchscript(g: Given) -> Path:
    path = g.tmp / "evil.pt"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("evil/data.pkl", pickle.dumps({"w": _Payload(f"touch {g.tmp / 'pwned'}")}, protocol=2))
        archive.writestr("evil/constants.pkl", pickle.dumps((), protocol=2))
        archive.writestr("evil/version", "3\n")
        archive.writestr("evil/code/__torch__/evil.py", "def forward(self):\n  pass\n")
    return path


def model_copy(g: Given, change: Callable[[Path], None]) -> Path:
    folder = g.tmp / "model"
    folder.mkdir()
    for f in g.model.iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    change(folder)
    return folder


def edit_json(folder: Path, edit: Callable[[dict], None]) -> None:
    config = json.loads((folder / "detector.json").read_text())
    edit(config)
    (folder / "detector.json").write_text(json.dumps(config))


def rename_tensor(folder: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(folder / "detector.safetensors"))
    name = sorted(state)[0]
    state["renamed"] = state.pop(name)
    save_file(state, str(folder / "detector.safetensors"))


def first_run(g: Given, *args) -> Path:
    out = g.tmp / "out"
    result = CliRunner().invoke(app, ["detect", str(g.query), "--out", str(out), *map(str, args), *FAST])
    assert result.exit_code == 0, result.output
    return out


def jsonl_with_bad_first_line(g: Given) -> list:
    queries = g.tmp / "q"
    queries.mkdir()
    for i in range(3):
        Image.fromarray(texture(30 + i)).save(queries / f"q{i}.png")
    out = g.tmp / "out"
    CliRunner().invoke(app, ["detect", str(queries), "--model", str(g.model), "--out", str(out), *FAST])
    lines = (out / "results.jsonl").read_text().splitlines()
    (out / "results.jsonl").write_text("\n".join(['{"path": "cut mid-wri', *lines[1:]]) + "\n")
    return ["detect", queries, "--model", g.model, "--out", out]


def locked_out(g: Given) -> list:
    out = g.tmp / "out"
    out.mkdir()
    g.monkeypatch.setattr(Given, "held_lock", lock_output_dir(out), raising=False)  # kept open: held
    return ["detect", g.query, "--model", g.model, "--out", out]


def from_another_directory(g: Given) -> list:
    (g.tmp / "a").mkdir()
    (g.tmp / "b").mkdir()
    Image.fromarray(texture(7)).save(g.tmp / "a" / "q.png")
    g.monkeypatch.chdir(g.tmp / "a")
    CliRunner().invoke(app, ["detect", "q.png", "--model", str(g.model), "--out", str(g.tmp / "out"), *FAST])
    g.monkeypatch.chdir(g.tmp / "b")
    return ["detect", "../a/q.png", "--model", g.model, "--out", g.tmp / "out"]


def out_inside_refs(g: Given) -> list:
    refs = g.tmp / "refs"
    refs.mkdir()
    for f in g.refs.iterdir():
        (refs / f.name).write_bytes(f.read_bytes())
    args = ["detect", g.query, "--refs", refs, "--out", refs / "out", "--threshold", "auto"]
    CliRunner().invoke(app, [*map(str, args), *FAST])  # the first run writes overlays into refs/out
    return args


def defect_without_mask(g: Given) -> list:
    cat = g.tmp / "data" / "tiles"
    for folder, n in (("train/good", 2), ("test/good", 2), ("test/spot", 2), ("ground_truth/spot", 1)):
        (cat / folder).mkdir(parents=True)
        for i in range(n):
            image = np.full((48, 48), 0, np.uint8) if "ground" in folder else texture(40 + i)[..., 0]
            Image.fromarray(image).save(cat / folder / (f"{i}_mask.png" if "ground" in folder else f"{i}.png"))
    return ["benchmark", "--data", g.tmp / "data", "--out", g.tmp / "bench", "--set", "image_size=64", "--no-progress"]


def formula_file_name(g: Given) -> list:
    Image.fromarray(texture(8)).save(g.tmp / "=1+1.png")
    g.monkeypatch.chdir(g.tmp)
    return ["detect", "=1+1.png", "--model", g.model, "--out", g.tmp / "out"]


def animation(g: Given, suffix: str, frames: int) -> list:
    images = [Image.fromarray(texture(i)) for i in range(frames)]
    images[0].save(g.tmp / f"many{suffix}", save_all=True, append_images=images[1:])
    return ["detect", g.tmp / f"many{suffix}", "--model", g.model, "--out", g.tmp / "out"]


def write(g: Given, name: str, data: bytes) -> list:
    (g.tmp / name).write_bytes(data)
    return ["detect", g.tmp / name, "--model", g.model, "--out", g.tmp / "out"]


def symlink_loop(g: Given) -> list:
    os.symlink(g.tmp / "b.png", g.tmp / "a.png")
    os.symlink(g.tmp / "a.png", g.tmp / "b.png")
    return ["detect", g.tmp / "a.png", g.query, "--model", g.model, "--out", g.tmp / "out"]


def model_files_have_one_mode(g: Given) -> None:
    modes = {(g.tmp / "fitted" / n).stat().st_mode & 0o777 for n in ("detector.json", "detector.safetensors")}
    assert len(modes) == 1


def jsonl_has_one_line(g: Given) -> None:
    assert len((g.tmp / "out" / "results.jsonl").read_text().splitlines()) == 1


def csv_cell_escaped(g: Given) -> None:
    assert "\n'=1+1.png," in (g.tmp / "out" / "results.csv").read_text()


def detect(g: Given, *args) -> list:
    return ["detect", g.query, "--model", g.model, "--out", g.tmp / "out", *args]


# ---- the table ----------------------------------------------------------------------------------

CASES = [
    Case("1", "TorchScript --weights whose data.pkl runs a command",
         lambda g: ["detect", g.query, "--method", "fade", "--backbone", "test-tiny", "--weights",
                    evil_torchscript(g), "--out", g.tmp / "out"],
         2, "never runs code", lambda g: not (g.tmp / "pwned").exists() or pytest.fail("the payload ran")),
    Case("2", "model folder without detector.safetensors",
         lambda g: ["detect", g.query, "--model", model_copy(g, lambda m: (m / "detector.safetensors").unlink()),
                    "--out", g.tmp / "out"],
         2, "detector.safetensors is missing: the model's learned tensors"),
    Case("2", "a tensor renamed in detector.safetensors",
         lambda g: ["detect", g.query, "--model", model_copy(g, rename_tensor), "--out", g.tmp / "out"],
         2, "does not match detector.json: missing"),
    Case("3", "a bad line in results.jsonl on resume", jsonl_with_bad_first_line,
         0, "1 line(s) are not valid records (line 1); kept 2 valid records",
         lambda g: (g.tmp / "out" / "results.jsonl.bak").exists() or pytest.fail("no backup")),
    Case("4", "--threshold nan", lambda g: detect(g, "--threshold", "nan"), 2, "threshold must be a finite number"),
    Case("4", "--threshold inf", lambda g: detect(g, "--threshold", "inf"), 2, "threshold must be a finite number"),
    Case("4", "--threshold -0.5", lambda g: detect(g, "--threshold", "-0.5"), 2, "threshold must be >= 0"),
    Case("4", "--quantile 1.5",
         lambda g: ["detect", g.query, "--refs", g.refs, "--threshold", "auto", "--quantile", "1.5",
                    "--out", g.tmp / "out"], 2, "threshold quantile must be a finite number in [0, 1], got 1.5"),
    Case("5", "12-bit data (sBIT) in a 16-bit PNG of a good part", twelve_bit_good_part, 0, "OK 1, NG 0"),
    Case("5", "--bit-depth 9", lambda g: detect(g, "--bit-depth", "9"), 2, "--bit-depth: bit depth must be one of"),
    Case("5", "--engine ray --model with another --bit-depth than the model's",
         lambda g: detect(g, "--engine", "ray", "--bit-depth", "12"), 2,
         "--bit-depth/--max-pixels with --engine ray --model: the actors read files as"),
    Case("6", "resume with another threshold",
         lambda g: ["detect", g.query, "--model", g.model, "--threshold", "0.7",
                    "--out", first_run(g, "--model", g.model, "--threshold", "0.5")],
         2, "other settings (pixel_threshold.value: 0.5 -> 0.7; threshold.value: 0.5 -> 0.7)"),
    Case("7", "a second run on an --out being written", locked_out, 2, "is being written by another anomalens run"),
    Case("7", "re-run from another working directory", from_another_directory, 0, "resuming: 1 of 1 images",
         jsonl_has_one_line),
    Case("8", "--out inside --refs (overlays of a first run)", out_inside_refs, 0,
         "of 3 leave-one-out reference scores"),
    Case("9", "benchmark: a defect image without its mask", defect_without_mask, 0,
         "1 defect image(s) have no mask; left out of the pixel metrics"),
    Case("10", "decompression bomb: 28000 x 28000 PNG", lambda g: detect(g)[:1] + [bomb(g)] + detect(g)[2:], 1,
         "28000 x 28000 = 784,000,000 pixels is more than the limit of 50,000,000 pixels (max_pixels)"),
    Case("10", "--max-pixels 0", lambda g: detect(g, "--max-pixels", "0"), 2, "--max-pixels must be a positive"),
    Case("11", "detector.json is not JSON",
         lambda g: ["detect", g.query, "--model", model_copy(g, lambda m: (m / "detector.json").write_text("{x")),
                    "--out", g.tmp / "out"], 2, "detector.json: not a readable model file"),
    Case("11", "detector.json: a misspelt setting",
         lambda g: ["detect", g.query, "--model",
                    model_copy(g, lambda m: edit_json(m, lambda c: c["settings"].update(imagesize=3))),
                    "--out", g.tmp / "out"], 2, "detector.json: unknown patchknn setting imagesize"),
    Case("11", "detector.json: threshold not a number",
         lambda g: ["detect", g.query, "--model",
                    model_copy(g, lambda m: edit_json(m, lambda c: c.update(threshold="high"))),
                    "--out", g.tmp / "out"], 2, "detector.json: could not convert string to float"),
    Case("11", "detector.json: references not a list",
         lambda g: ["detect", g.query, "--model",
                    model_copy(g, lambda m: edit_json(m, lambda c: c.update(references=5))),
                    "--out", g.tmp / "out"], 2, "detector.json: 'references' is not a list of paths"),
    Case("11", "detector.safetensors is garbage",
         lambda g: ["detect", g.query, "--model",
                    model_copy(g, lambda m: (m / "detector.safetensors").write_bytes(b"\x00junk")),
                    "--out", g.tmp / "out"], 2, "detector.safetensors: not a readable safetensors file"),
    Case("11", "--set with a misspelt key", lambda g: ["detect", g.query, "--set", "imagesize=64", "--out", g.tmp],
         2, "unknown patchknn setting imagesize; known: backbone"),
    Case("11", "--set with a wrong type", lambda g: ["detect", g.query, "--set", "image_size=abc", "--out", g.tmp],
         2, "setting image_size must be an integer, got 'abc'"),
    Case("11", "--set that is not YAML", lambda g: ["detect", g.query, "--set", "image_size=[1,", "--out", g.tmp],
         2, "cannot parse the value as YAML"),
    Case("11", "--set without a value", lambda g: ["detect", g.query, "--set", "image_size", "--out", g.tmp],
         2, "--set expects key=value, got 'image_size'"),
    Case("11", "--weights file that does not exist",
         lambda g: ["detect", g.query, "--method", "fade", "--backbone", "test-tiny", "--weights", g.tmp / "no.pt",
                    "--out", g.tmp / "out"], 2, "does not exist. Pass the file with --weights PATH"),
    Case("11", "a file name that is a spreadsheet formula", formula_file_name, 0, "OK", csv_cell_escaped),
    Case("11", "model files written with different modes",
         lambda g: ["fit", "--refs", g.refs, "--out", g.tmp / "fitted", "--image-size", "64"], 0,
         "saved patchknn model", model_files_have_one_mode),
    Case("11", "animated GIF", lambda g: animation(g, ".gif", 12), 0, "many.gif: first frame of 12 read"),
    Case("11", "multi-page TIFF", lambda g: animation(g, ".tif", 3), 0, "many.tif: first page of 3 read"),
    Case("11", "1 x 1 image", lambda g: write(g, "dot.png", png(1, 1, zlib.compress(b"\x00\x80"))), 0,
         "dot.png: 1 x 1 pixels: upscaled to the model's input"),
    Case("11", "symlink loop", symlink_loop, 1, "a.png: symbolic link loop"),
    # The bad files a batch meets every day (named, the batch goes on):
    Case("-", "empty file", lambda g: write(g, "empty.png", b""), 1, "empty.png: file is empty (0 bytes)"),
    Case("-", "text named .png", lambda g: write(g, "text.png", b"hello"), 1, "not an image file Pillow can read"),
    Case("-", "truncated PNG", lambda g: write(g, "cut.png", png(64, 64, zlib.compress(b"\x00" * 65 * 64))[:60]), 1,
         "cut.png: "),
    Case("-", "file that does not exist", lambda g: detect(g)[:1] + [g.tmp / "nothing.png"] + detect(g)[2:], 1,
         "nothing.png: file does not exist"),
]


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("shared")
    (root / "refs").mkdir()
    for i in range(3):
        Image.fromarray(texture(i)).save(root / "refs" / f"g{i}.png")
    Image.fromarray(texture(20)).save(root / "q.png")
    result = CliRunner().invoke(app, ["fit", "--refs", str(root / "refs"), "--out", str(root / "model"), *FAST[:2]])
    assert result.exit_code == 0, result.output
    return root


@pytest.mark.parametrize("case", CASES, ids=[f"{c.item}: {c.case}" for c in CASES])
def test_bad_input(case: Case, shared, tmp_path, monkeypatch):
    given = Given(tmp_path, shared / "refs", shared / "q.png", shared / "model", monkeypatch)
    args = [str(a) for a in case.build(given)]
    if args[0] == "detect":  # small and quick: no thread pool, no report, 64 px for a fitted patchknn
        args += FAST[2:] + (FAST[:2] if "--model" not in args and "--method" not in args else [])
    result = CliRunner().invoke(app, args)
    output = " ".join(result.output.split())  # one line, whatever the terminal width
    assert result.exit_code == case.exit, f"exit {result.exit_code}, expected {case.exit}\n{result.output}"
    assert " ".join(case.message.split()) in output, result.output
    if case.exit == 2:
        assert "Traceback" not in result.output and result.output.count("error:") == 1
    if case.then is not None:
        case.then(given)
