"""Parity of anomalens' `winclip` with anomalib's `WinClipModel` on the same random weights.

Usage (anomalib and its dependencies live in their own venv):

    /work/venv-anomalib/bin/python benchmarks/winclip_parity.py

Both models are ViT-B-16-plus-240 with one set of random weights (anomalib's download of
laion400m_e31 is replaced by pretrained=None, then our weights are copied into its CLIP), see
the same normalised 240 x 240 inputs (our `to_model_input` of synthetic images), the same
prompts (anomalib's list) and the same temperature (anomalib's). Every quantity is compared
by its maximum absolute difference. Known differences are reported as EXPLAINED only after the
script has reproduced them; anything else over the tolerance is a FAIL (exit code 1).
"""

from __future__ import annotations

import argparse
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import open_clip
import torch
import torch.nn.functional as F
from anomalib.models.image.winclip import prompting, torch_model
from anomalib.models.image.winclip.torch_model import WinClipModel

from anomalens.geometry import to_model_input
from anomalens.images import LoadedImage
from anomalens.methods.winclip import WinClip, WinClipFeatures, WinClipSettings
from anomalens.text.features import TextFeatureCache
from anomalens.text.prompts import TEMPLATES as PAPER_TEMPLATES
from anomalens.text.prompts import winclip_prompts

ARCH = "ViT-B-16-plus-240"  # anomalib's backbone; --arch test-tiny is a seconds-long smoke run
TOLERANCE = 1e-4
CATEGORY = "object"


@dataclass
class Row:
    quantity: str
    diff: float
    status: str  # PASS, FAIL or EXPLAINED
    note: str = ""


ROWS: list[Row] = []


def compare(quantity: str, ours, theirs, explanation: str | None = None, reproduced: bool = False) -> float:
    """Record max |ours - theirs|; over tolerance it is EXPLAINED only when `reproduced`."""
    diff = float((torch.as_tensor(ours).double() - torch.as_tensor(theirs).double()).abs().max())
    if diff <= TOLERANCE:
        ROWS.append(Row(quantity, diff, "PASS"))
    elif explanation is not None and reproduced:
        ROWS.append(Row(quantity, diff, "EXPLAINED", explanation))
    else:
        ROWS.append(Row(quantity, diff, "FAIL", explanation or ""))
    return diff


def synthetic_images(n: int, seed: int, size: int) -> list[LoadedImage]:
    """Smooth textures with a few dark or bright blobs: enough structure for CLIP tokens to differ."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size
    images = []
    for i in range(n):
        f = rng.uniform(2, 8, size=3)
        base = 0.5 + 0.25 * np.sin(2 * np.pi * (f[0] * xx + f[1] * yy))[..., None] * rng.uniform(0.5, 1, 3)
        base = base + 0.05 * rng.standard_normal((size, size, 3))
        for _ in range(i):  # image i has i defects
            cy, cx, r = rng.uniform(0.2, 0.8), rng.uniform(0.2, 0.8), rng.uniform(0.03, 0.1)
            base[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = rng.choice([0.05, 0.95])
        rgb = (np.clip(base, 0, 1) * 255).astype(np.uint8)
        images.append(LoadedImage(path=f"synthetic{seed}_{i}.png", rgb=rgb))
    return images


@contextmanager
def random_clip_weights(arch: str):
    """Let anomalib build `arch` without downloading: pretrained=None (random init)."""
    original = open_clip.create_model_and_transforms

    def without_download(name, pretrained=None, **kwargs):
        return original(arch, pretrained=None, **kwargs)

    torch_model.open_clip.create_model_and_transforms = without_download
    try:
        yield
    finally:
        torch_model.open_clip.create_model_and_transforms = original


@contextmanager
def batch_first_fix(model: WinClipModel):
    """anomalib permutes window sequences to (L, N, D) for open_clip's transformer, which is batch-first
    (open_clip 3.3); telling the transformer it is sequence-first makes the permute correct."""
    original = WinClipModel._get_window_embeddings

    def fixed(self, feature_map, masks):
        transformer = self.clip.visual.transformer
        transformer.batch_first = False
        try:
            return original(self, feature_map, masks)
        finally:
            transformer.batch_first = True

    model._get_window_embeddings = fixed.__get__(model)
    try:
        yield
    finally:
        del model._get_window_embeddings


def windows_as_anomalib_ships(ours: WinClip, inputs: torch.Tensor, windows: torch.Tensor) -> torch.Tensor:
    """Our window sequences through the transformer transposed, as anomalib feeds them: attention
    then runs across all windows of the batch at one token position instead of within a window."""
    tokens, _ = ours.backbone.embed(inputs)
    index = torch.cat([torch.zeros(len(windows), 1, dtype=torch.long), windows + 1], dim=1)
    sequences = tokens[:, index].flatten(0, 1)
    out = ours.backbone.model.visual.transformer(sequences.transpose(0, 1)).transpose(0, 1)
    return ours.backbone.pool(out).view(len(inputs), len(windows), -1)


class Recorder:
    """Stands in for a callable and keeps what every call returned."""

    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def __call__(self, *args, **kwargs):
        out = self.fn(*args, **kwargs)
        self.calls.append(out)
        return out


def pixels(maps: list) -> np.ndarray:
    return np.stack([o.anomaly_map for o in maps])


def log(message: str) -> None:
    print(f"[{time.perf_counter() - START:6.0f} s] {message}", flush=True)


START = time.perf_counter()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default=ARCH, help="CLIP architecture for both models (random weights)")
    parser.add_argument("--queries", type=int, default=2, help="number of synthetic query images")
    args = parser.parse_args()
    size = open_clip.get_model_config(args.arch)["vision_cfg"]["image_size"]  # anomalib's fixed grid
    torch.manual_seed(0)
    cache = TextFeatureCache(cache_dir=None)  # random-weight text features must not reach the disk
    settings = WinClipSettings(
        backbone=args.arch, image_size=size, weights="random", temperature=torch_model.TEMPERATURE
    )
    ours = WinClip(settings, text_cache=cache).fit([])  # zero-shot first
    with random_clip_weights(args.arch):
        theirs = WinClipModel(class_name=None).eval()
    theirs.clip.load_state_dict(ours.backbone.model.state_dict())
    theirs.encode_image = Recorder(theirs.encode_image)  # its forward calls self.encode_image
    theirs.clip.encode_text = Recorder(theirs.clip.encode_text)
    log("models built on the same random weights")

    queries, references = synthetic_images(args.queries, 1, size), synthetic_images(1, 2, size)
    q = torch.stack([to_model_input(i.rgb, size, ours.backbone.mean, ours.backbone.std)[0] for i in queries])
    r = torch.stack([to_model_input(i.rgb, size, ours.backbone.mean, ours.backbone.std)[0] for i in references])

    # ---- prompts and text prototypes ------------------------------------------------------------
    their_normal, their_anomalous = prompting.create_prompt_ensemble(CATEGORY)
    our_normal, our_anomalous = winclip_prompts(CATEGORY)
    one_side_only = sorted(set(prompting.TEMPLATES) ^ set(PAPER_TEMPLATES))
    duplicates = len(prompting.TEMPLATES) - len(set(prompting.TEMPLATES))
    print(
        f"prompts: anomalib {len(their_normal)} normal / {len(their_anomalous)} anomalous "
        f"({len(prompting.TEMPLATES)} templates, {duplicates} duplicate); anomalens {len(our_normal)} / "
        f"{len(our_anomalous)} ({len(PAPER_TEMPLATES)} paper templates). In one list only: {one_side_only}"
    )
    ours.set_prompts(their_normal, their_anomalous)  # parity: anomalib's list on both sides
    theirs.setup(CATEGORY)
    raw_normal, raw_anomalous = theirs.clip.encode_text.calls[-2:]
    their_protos = F.normalize(theirs.text_embeddings, dim=-1)
    # Same encoder output per prompt; anomalib's prototype is the normalised mean of the raw ones.
    same_prompts = max(
        float((F.normalize(raw_normal, dim=-1) - ours.normal_text).abs().max()),
        float((F.normalize(raw_anomalous, dim=-1) - ours.anomalous_text).abs().max()),
    )
    raw_protos = F.normalize(torch.stack([raw_normal.mean(0), raw_anomalous.mean(0)]), dim=-1)
    compare(
        "text prototypes (same prompts)",
        ours.prototypes,
        their_protos,
        "anomalib averages raw text embeddings, anomalens (like CLIP's prompt ensembling) unit ones",
        reproduced=same_prompts <= TOLERANCE and float((raw_protos - their_protos).abs().max()) <= TOLERANCE,
    )
    theirs._text_embeddings = ours.prototypes.clone()  # the same prototypes from here on
    log("text prototypes compared")

    # ---- anomalib as shipped: embeddings and zero-shot -------------------------------------------
    with torch.no_grad():
        shipped = theirs(q)
        their_image, their_windows, their_patches = theirs.encode_image.calls[-1]
        feats = ours.encode(q)
        replicas = [windows_as_anomalib_ships(ours, q, w) for w in ours.windows]
    compare("image embedding (CLS, unit)", F.normalize(feats.image, dim=-1), F.normalize(their_image, dim=-1))
    compare("patch embeddings (ln_post)", feats.patches, their_patches)
    for scale, ow, theirs_w, replica in zip(settings.window_scales, feats.windows, their_windows, replicas):
        compare(
            f"window embeddings {scale}x{scale} (anomalib as shipped)",
            ow,
            theirs_w,
            "anomalib feeds (L, N, D) to open_clip's batch-first transformer: windows attend to each other",
            reproduced=float((replica - theirs_w).abs().max()) <= TOLERANCE,
        )
    # Our scoring on the reproduced window embeddings gives anomalib's shipped map.
    _, replica_map = ours.zero_shot_maps(WinClipFeatures(feats.grid, feats.image, replicas, feats.patches))
    replica_pixels = F.interpolate(replica_map.view(-1, 1, *ours.grid), size=(size, size), mode="bilinear")[:, 0]
    ours_zero = ours.predict(queries)
    compare(
        "zero-shot maps (anomalib as shipped)",
        pixels(ours_zero),
        shipped.anomaly_map,
        "follows from the window embeddings above",
        reproduced=float((replica_pixels - shipped.anomaly_map).abs().max()) <= TOLERANCE,
    )
    log("anomalib as shipped compared")

    # ---- zero-shot and one-shot with anomalib's window embeddings fixed --------------------------
    with batch_first_fix(theirs), torch.no_grad():
        zero = theirs(q)
        for scale, ow, theirs_w in zip(settings.window_scales, feats.windows, theirs.encode_image.calls[-1][1]):
            compare(f"window embeddings {scale}x{scale} (batch-first fix)", ow, theirs_w)
        compare("zero-shot image scores", [o.score for o in ours_zero], zero.pred_score)
        compare("zero-shot maps", pixels(ours_zero), zero.anomaly_map)
        log("zero-shot compared")

        ours.fit(references)
        theirs.setup(reference_images=r)
        # anomalib's setup re-encodes the class name's prompts: keep the shared prototypes.
        theirs._text_embeddings = ours.prototypes.clone()
        ours_one = ours.predict(queries)
        one = theirs(q)
        compare("1-shot image scores", [o.score for o in ours_one], one.pred_score)
        compare("1-shot maps", pixels(ours_one), one.anomaly_map)
        log("one-shot compared")

    # ---- report ----------------------------------------------------------------------------------
    print(f"\nanomalib {version('anomalib')}, open_clip {version('open_clip_torch')}, torch {torch.__version__}")
    print(f"{args.arch} at {size} px, random weights, {len(queries)} queries + {len(references)} reference")
    print(f"tolerance {TOLERANCE:g} (max abs difference)")
    print(f"temperature {settings.temperature} (anomalib's TEMPERATURE; the paper/anomalens default is 0.01)\n")
    width = max(len(row.quantity) for row in ROWS)
    print(f"{'quantity':<{width}}  {'max abs diff':>12}  status")
    for row in ROWS:
        note = f"  ({row.note})" if row.status != "PASS" and row.note else ""
        print(f"{row.quantity:<{width}}  {row.diff:>12.3g}  {row.status}{note}")
    failed = [row for row in ROWS if row.status == "FAIL"]
    print(f"\n{'FAIL' if failed else 'PASS'}: {len(ROWS) - len(failed)}/{len(ROWS)} quantities pass or are explained")
    return 1 if failed else 0


def version(package: str) -> str:
    from importlib.metadata import version as pkg_version

    return pkg_version(package)


if __name__ == "__main__":
    sys.exit(main())
