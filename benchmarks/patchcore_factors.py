"""Why anomalib's PatchCore beats patchknn on magnetic_tile: its pipeline rebuilt from patchknn's, one factor at a time.

Both read the same EfficientNet-Lite0 blocks 4 and 10 on the same 256 x 256 [-1, 1] inputs.
They differ in how patches are embedded, compared and turned into scores:

| factor | patchknn (before issue 17) | PatchCore (anomalib 2.7) |
|---|---|---|
| pool | 3 x 3 average, padding not counted | 3 x 3 average, zero padding counted (edges shrink) |
| norm | each block, then the concatenation, L2-normalised | none (raw activations) |
| dist | cosine | Euclidean |
| up | patch map upsampled bilinearly | nearest |
| score | max of the sigma-4 smoothed map | max of the raw patch map |
| coreset / reweight | none | greedy k-centre 10 %, reweighting over 9 neighbours |
| edge | - | (patchknn's new `edge_weighting`: the score weighs edge patches as zero padding does) |

Levers tried after the factors above (session 3 of issue 17), also JSON changes: `blocks` (which
Lite0 blocks are read, e.g. [4, 14] adds the stride-32 stage end instead of block 10), `photometric`
("standardise": each model input to mean 0, std 0.5), `gain` ("layer": each block's raw output
layer-normalised over (C, H, W) per image, as MuSc's LNAMD does, and divided by sqrt(C) so blocks weigh
alike; with `norm` false and Euclidean distance it keeps local magnitudes but not an image's global
gain), `soft` (soft normalisation
f / sqrt(|f|^2 + (soft * tau)^2), tau the bank's median patch norm per block, Euclidean distance;
0 = patchknn's L2 normalisation, large = raw magnitudes) and `augment` ("flips" / "dihedral"
copies of the references in the bank).

Raw block outputs are extracted once per category into --cache (about 190 MB for
magnetic_tile); every variant then runs on them in seconds. Each variant is a JSON dict of
changes to `PATCHKNN` below; `PATCHCORE` is the whole anomalib pipeline (it reproduces the peer
script's numbers: mpdd_metal_plate 1-shot seed 0 71.3 / 94.2 / 75.4 here vs 71.0 / 94.2 / 75.3).

    python benchmarks/patchcore_factors.py --categories magnetic_tile --shots 4 --seeds 0 \\
        '{}' '{"norm": false, "dist": "euclidean"}' '{"norm": false, "dist": "euclidean", "pool": "zero_pad"}'
    python benchmarks/patchcore_factors.py --patchcore   # the whole PatchCore pipeline

Pixel metrics are exact unless --binned (2^16 score bins: faster, within about 0.1 point).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from anomalens.backbones.cnn import LITE_MEAN, LITE_STD, EfficientNetPatchBackbone
from anomalens.coreset import greedy_coreset
from anomalens.data import load_dataset, load_mask, sample_references
from anomalens.geometry import to_model_input
from anomalens.images import load_image
from anomalens.methods.patch_gaussian import PatchGaussian
from anomalens.metrics import DEFAULT_EXACT_PIXEL_LIMIT, PixelMetricAccumulator, image_metrics
from anomalens.scoring import edge_weights, gaussian_smooth

SIZE = 256
PATCHKNN = dict(
    pool="valid",  # "valid": average over the cells on the grid; "zero_pad": zeros count (PatchCore)
    norm=True,  # per-block and overall L2 normalisation
    dist="cosine",  # or "euclidean"
    up="bilinear",  # patch map -> input size: "bilinear" or "nearest"
    sigma=4.0,
    score="smoothed_max",  # or "raw_max" (max of the patch map)
    edge=False,  # weigh the smoothed map by the share of each patch's window on the grid (score only)
    coreset=0.0,  # fraction of the bank kept by greedy k-centre (0 = all)
    reweight=0,  # PatchCore's reweighting over this many neighbours (0 = off)
    zero_shot_k=2,
    # Levers tried after the PatchCore factors (issue 17, session 3):
    blocks=[4, 10],  # Lite0 blocks read (4: stride 8, 10: stride 16, 14: stride 32); the first sets the grid
    photometric="none",  # "standardise": each model input shifted/scaled to mean 0, std 0.5 before the backbone
    soft=0.0,  # > 0: each block f / sqrt(|f|^2 + (soft * tau)^2), Euclidean; tau = median pooled norm of the bank
    augment="none",  # references also enter the bank "flips" (x4) or "dihedral" (x8)
    # Issue 17, session 4: keep the magnitudes (Euclidean) but remove each image's global gain.
    gain="none",  # "layer": each block layer-normalised over its (C, H, W) per image (MuSc's LNAMD step)
    mix=0.0,  # > 0: patch distance + mix * the Euclidean distance of the gain="layer", zero-padded embedding
    mix_auto=False,  # with references: d / s + d_m / s_m, s the 99th percentile of the references' own distances
    # Issue 17, session 5: the cosine direction plus each block's length as one more channel (MuSc's l2_length).
    length=0.0,  # > 0: weight w of the length channels; Euclidean distance on [unit directions / sqrt(B), sqrt(w) L_b]
    length_kind="linear",  # L_b: "linear" |LN(f_b)| / sqrt(C_b) (layer-normalised per image) or "log" its logarithm
    dir_blocks=None,  # with length: positions in `blocks` whose directions are used (None = all)
    len_blocks=None,  # with length: positions in `blocks` whose lengths are used (None = all)
    # Issue 17, session 8: deeper blocks scored on their own coarse grid (a second, small kNN), the
    # map upsampled to the stride-8 grid and added; the main embedding then reads `dir_blocks`/`len_blocks`.
    coarse=None,  # positions in `blocks` embedded (as the main one) and compared on their own grid
    coarse_weight=1.0,  # weight of the coarse map in the sum
    # Issue 17, session 15 (with references only): the bank's patches as one Gaussian ...
    whiten=0.0,  # > 0: the kNN compares patches whitened by the bank's covariance plus this share of its mean variance
    gauss_weight=0.0,  # > 0: + this times each patch's Mahalanobis distance to the bank's Gaussian / sqrt(dim)
    gauss_shrink=0.1,  # ... whose covariance gets this share of its mean variance on the diagonal
    # ... and a patch's distance from its own image's per-channel median patch beyond what its nearest
    # reference patch has from its image's median ("a second finish in one tile")
    context_weight=0.0,
    context_blocks=None,  # positions in `blocks` of that embedding, on their own grid (None = the main embedding)
    # Issue 17, session 16: the reference image that matches the whole query best ("one finish per tile"):
    # map = nearest over all references + per_ref x (nearest within that one reference - nearest over all)
    per_ref=0.0,
    per_ref_pick="mean",  # how the best reference is chosen: lowest "mean" or "median" patch distance
)
# The second embedding of `mix`: per-image layer-normalised magnitudes, compared by Euclidean distance.
MAGNITUDES = dict(gain="layer", norm=False, dist="euclidean", pool="zero_pad", soft=0.0, mix=0.0)
PATCHCORE = dict(pool="zero_pad", norm=False, dist="euclidean", up="nearest", score="raw_max", coreset=0.1, reweight=9)


def key(path) -> str:
    return str(Path(path).resolve())


def model_input(rgb: np.ndarray, photometric: str) -> torch.Tensor:
    """One image as the backbone sees it (squash, [-1, 1]), optionally standardised per image."""
    x = to_model_input(rgb, SIZE, LITE_MEAN, LITE_STD, "squash")[0]
    if photometric == "standardise":
        x = (x - x.mean()) / x.std().clamp_min(1e-3) * 0.5
    return x


def extract(category: str, split, cache: Path, blocks=(4, 10), photometric: str = "none") -> dict:
    """{path: ([raw output of each block (C_b, h_b, w_b)] float16, image (h, w))}, cached on disk."""
    blocks = tuple(blocks)
    name = f"raw-{category}-{SIZE}"
    if blocks != (4, 10) or photometric != "none":
        name += f"-b{'_'.join(map(str, blocks))}-{photometric}"
    file = cache / f"{name}.pt"
    if file.exists():
        return torch.load(file, weights_only=False)
    net = EfficientNetPatchBackbone(image_size=SIZE, blocks=blocks, neighbourhood=1)
    paths = list(split.train_good) + [s.path for s in split.test]
    store = {}
    for i in range(0, len(paths), 16):
        images = [load_image(p) for p in paths[i : i + 16]]
        x = torch.stack([model_input(im.rgb, photometric) for im in images])
        for j, levels in enumerate(zip(*net.block_outputs(x))):
            store[key(paths[i + j])] = ([level.half().clone() for level in levels], images[j].size_hw)
    cache.mkdir(parents=True, exist_ok=True)
    torch.save(store, file.with_suffix(".part"))
    file.with_suffix(".part").replace(file)
    return store


def pooled(levels: list[torch.Tensor], v: dict) -> list[torch.Tensor]:
    """Each block 3 x 3 average-pooled and brought to the first block's grid."""
    grid = levels[0].shape[-2:]
    out = []
    for feat in levels:
        if v["gain"] == "layer":  # per image: zero mean, unit variance over the block's whole map
            flat = feat.flatten(1)
            feat = ((flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True).clamp_min(1e-6)).view_as(feat)
            feat = feat / feat.shape[1] ** 0.5  # each block then weighs about equally in the distance
        feat = F.avg_pool2d(feat, 3, stride=1, padding=1, count_include_pad=v["pool"] == "zero_pad")
        if feat.shape[-2:] != grid:
            feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
        out.append(feat)
    return out


def soft_scales(levels: list[torch.Tensor], v: dict) -> list[torch.Tensor]:
    """tau of each block for the soft normalisation: the median pooled patch norm over these images."""
    return [feat.norm(dim=1).median() for feat in pooled(levels, v)]


def embed(levels: list[torch.Tensor], v: dict, taus: list | None = None) -> torch.Tensor:
    """(N, C_b, h_b, w_b) raw block outputs -> (N, h * w, C) patch embeddings on the stride-8 grid.

    With v["soft"] > 0 and no taus (zero-shot), each image's own median norm is its tau.
    """
    out = []
    if v["length"] > 0:  # directions as patchknn's default, lengths of the gain-free magnitudes
        dirs = v["dir_blocks"] if v["dir_blocks"] is not None else range(len(levels))
        lens = v["len_blocks"] if v["len_blocks"] is not None else range(len(levels))
        units = [F.normalize(feat, dim=1) / len(dirs) ** 0.5 for feat in pooled([levels[b] for b in dirs], v)]
        lengths = [feat.norm(dim=1, keepdim=True) for feat in pooled([levels[b] for b in lens], {**v, "gain": "layer"})]
        if v["length_kind"] == "log":
            lengths = [torch.log(length.clamp_min(1e-3)) for length in lengths]
        emb = torch.cat(units + [v["length"] ** 0.5 * length for length in lengths], 1)
        return emb.permute(0, 2, 3, 1).reshape(emb.shape[0], -1, emb.shape[1])
    for b, feat in enumerate(pooled(levels, v)):
        if v["soft"] > 0:
            norm = feat.norm(dim=1, keepdim=True)
            tau = taus[b] if taus is not None else norm.flatten(1).median(dim=1).values.view(-1, 1, 1, 1)
            out.append(feat / torch.sqrt(norm**2 + (v["soft"] * tau) ** 2))
        else:
            out.append(F.normalize(feat, dim=1) if v["norm"] else feat)
    emb = torch.cat(out, 1)
    if v["soft"] > 0:
        emb = emb / len(out) ** 0.5
    elif v["norm"]:
        emb = F.normalize(emb, dim=1)
    return emb.permute(0, 2, 3, 1).reshape(emb.shape[0], -1, emb.shape[1])


def context_map(levels: list[torch.Tensor], v: dict, taus) -> torch.Tensor:
    """(N, h * w) distance of each patch from its image's per-channel median patch, on the stride-8 grid."""
    sub = levels if v["context_blocks"] is None else [levels[p] for p in v["context_blocks"]]
    emb = embed(sub, v if v["context_blocks"] is None else {**v, "dir_blocks": None, "len_blocks": None}, taus)
    dev = (emb - emb.median(dim=1, keepdim=True).values).norm(dim=-1).view(len(emb), 1, *sub[0].shape[-2:])
    return F.interpolate(dev, size=levels[0].shape[-2:], mode="bilinear", align_corners=False).flatten(1)


def whitening(bank: torch.Tensor, v: dict) -> tuple:
    """(mean, W) of the bank: W = (C + s I)^(-1/2), s = v["whiten"] x the mean variance, scaled by 1 / sqrt(dim)
    so distances stay comparable with the other terms."""
    mean = bank.mean(0)
    cov = torch.cov((bank - mean).T.double())
    vals, vecs = torch.linalg.eigh(cov + v["whiten"] * cov.diagonal().mean() * torch.eye(len(cov), dtype=cov.dtype))
    return mean, ((vecs * vals.rsqrt()) @ vecs.T).float() / len(cov) ** 0.5


def augmented_reference_levels(refs: list, v: dict, net) -> list[torch.Tensor]:
    """Raw block outputs of the references, each also rotated/flipped (v["augment"])."""
    views = []
    for path in refs:
        x = model_input(load_image(path).rgb, v["photometric"])
        turns = range(8) if v["augment"] == "dihedral" else range(4)
        for t in turns:
            if v["augment"] == "dihedral":
                y = torch.rot90(x, t % 4, dims=(1, 2))
                views.append(torch.flip(y, dims=(2,)) if t >= 4 else y)
            else:  # flips: none, vertical, horizontal, both
                views.append(torch.flip(x, dims=[d for d, on in ((1, t & 1), (2, t & 2)) if on]) if t else x)
    return [level.float() for level in net.block_outputs(torch.stack(views))]


def nearest(query: torch.Tensor, bank: torch.Tensor, v: dict, k: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """k-th nearest bank patch of each query row: (distance, index)."""
    # soft-normalised features and lengths are compared by Euclidean distance
    if v["dist"] == "cosine" and not v["soft"] > 0 and not v["length"] > 0:
        sim, idx = (F.normalize(query, dim=1) @ F.normalize(bank, dim=1).T).topk(k, dim=1)
        return 0.5 * (1 - sim[:, k - 1]), idx[:, k - 1]
    dist, idx = torch.cdist(query, bank).topk(k, dim=1, largest=False)
    return dist[:, k - 1], idx[:, k - 1]


def per_reference_nearest(query: torch.Tensor, bank: torch.Tensor, owner: torch.Tensor, v: dict) -> torch.Tensor:
    """(N, P, C) queries -> (N * P,) distances: the union's nearest plus v["per_ref"] x the gap to the nearest
    patch of the one reference whose patches lie closest to the whole image."""
    refs = int(owner.max()) + 1
    out = []
    for q in query:
        dist = torch.cdist(q, bank)
        per = torch.stack([dist[:, owner == r].min(1).values for r in range(refs)])  # (R, P)
        union = per.min(0).values
        level = per.mean(1) if v["per_ref_pick"] == "mean" else per.median(1).values
        out.append(union + v["per_ref"] * (per[int(level.argmin())] - union))
    return torch.cat(out)


def reweighting(query: torch.Tensor, matched: torch.Tensor, bank: torch.Tensor, v: dict) -> torch.Tensor:
    """PatchCore eq. 7 for the worst query patch and its nearest bank patch."""
    support = torch.cdist(matched[None], bank)[0].topk(min(v["reweight"], len(bank)), largest=False).indices
    return 1 - torch.softmax((bank[support] - query).norm(dim=1), 0)[0]


def evaluate(
    split,
    store: dict,
    masks: dict,
    raw_test: list,
    refs: list,
    v: dict,
    seed: int,
    exact: bool,
    net=None,
    by_type: bool = False,
) -> dict:
    bank, taus = None, None
    if refs:
        if v["augment"] != "none":
            ref_levels = augmented_reference_levels(refs, v, net)
        else:
            ref_levels = [torch.stack([store[key(p)][0][i] for p in refs]).float() for i in range(len(raw_test))]
        taus = soft_scales(ref_levels, v) if v["soft"] > 0 else None
        bank = embed(ref_levels, v, taus)
        views = len(bank) // len(refs)  # augmented copies of one reference are that reference's
        owner = torch.arange(len(bank)).repeat_interleave(bank.shape[1]) // views
        bank = bank.reshape(-1, bank.shape[-1])
        if v["context_weight"] > 0:
            ref_context = context_map(ref_levels, v, taus).reshape(-1)
            if v["coreset"] > 0:
                raise SystemExit("context_weight needs the whole bank (coreset 0)")
        if v["coreset"] > 0:
            kept = greedy_coreset(bank, max(1, int(v["coreset"] * len(bank))), seed=seed)[0]
            bank, owner = bank[kept], owner[kept]
    test = embed(raw_test, v, taus)
    gauss = None
    if bank is not None and v["whiten"] > 0:  # (whitening takes the place of the Gaussian term)
        mean, white = whitening(bank, v)
        bank, test = (bank - mean) @ white, (test - mean) @ white
    elif bank is not None and v["gauss_weight"] > 0:  # the library's Gaussian, its distance without the baseline
        gauss = PatchGaussian.fit(bank, v["gauss_shrink"])
    if v["context_weight"] > 0 and bank is not None:
        test_context = context_map(raw_test, v, taus)
    scales = None
    if v["mix_auto"] and refs:  # each metric scaled by how far normal patches lie from other normal patches
        vm = {**v, **MAGNITUDES}
        scales = []
        for var, levels in ((v, ref_levels), (vm, ref_levels)):
            per_ref = embed(levels, var, taus if var is v else None)
            if len(per_ref) >= 2:
                normal = torch.cat(
                    [
                        nearest(per_ref[r], torch.cat([per_ref[o] for o in range(len(per_ref)) if o != r]), var)[0]
                        for r in range(len(per_ref))
                    ]
                )
            else:
                normal = nearest(per_ref[0], per_ref[0], var, 2)[0]
            scales.append(torch.quantile(normal.float(), 0.99))
        v = {**v, "mix": float(scales[0] / scales[1])}  # d / s + d_m / s_m = (d + (s / s_m) d_m) / s
    if v["mix"] > 0:  # the magnitude term's own bank and queries
        vm = {**v, **MAGNITUDES}
        test_m = embed(raw_test, vm)
        bank_m = None
        if refs:
            bank_m = embed(ref_levels, vm)
            bank_m = bank_m.reshape(-1, bank_m.shape[-1])
    if v["coarse"]:  # the deep blocks' own embedding, bank and queries on their grid
        vc = {**v, "dir_blocks": None, "len_blocks": None}
        test_c = embed([raw_test[p] for p in v["coarse"]], vc)
        coarse_grid = raw_test[v["coarse"][0]].shape[-2:]
        bank_c = None
        if refs:
            bank_c = embed([ref_levels[p] for p in v["coarse"]], vc)
            bank_c = bank_c.reshape(-1, bank_c.shape[-1])
    grid = (SIZE // 8, SIZE // 8)
    weights = edge_weights(grid, 3, SIZE) if v["edge"] else None
    labels, scores = [], []
    pixels = PixelMetricAccumulator(exact_pixel_limit=DEFAULT_EXACT_PIXEL_LIMIT if exact else 0)
    # --by-type: one binned accumulator per defect type, over the normals' pixels and that type's images
    kinds = sorted({s.defect_type for s in split.test if s.label}) if by_type and split.has_masks else []
    per_type = {kind: PixelMetricAccumulator(exact_pixel_limit=0) for kind in kinds}
    for start in range(0, len(split.test), 16):
        samples, query = split.test[start : start + 16], test[start : start + 16]
        if bank is not None and v["per_ref"] > 0:
            if v["reweight"] or v["context_weight"] > 0:
                raise SystemExit("per_ref gives no nearest-patch index: not with reweight or context_weight")
            dist = per_reference_nearest(query, bank, owner, v)
            idx = torch.zeros_like(dist, dtype=torch.long)  # a placeholder: no reweighting or context (above)
        elif bank is not None:
            dist, idx = nearest(query.reshape(-1, query.shape[-1]), bank, v)
        else:
            pairs = [nearest(q, q, v, v["zero_shot_k"]) for q in query]
            dist, idx = torch.cat([d for d, _ in pairs]), torch.cat([i for _, i in pairs])
        if v["mix"] > 0:
            q_m = test_m[start : start + 16]
            if bank_m is not None:
                dist_m = nearest(q_m.reshape(-1, q_m.shape[-1]), bank_m, vm)[0]
            else:
                dist_m = torch.cat([nearest(q, q, vm, v["zero_shot_k"])[0] for q in q_m])
            dist = dist + v["mix"] * dist_m
        if gauss is not None:  # Mahalanobis distance |L^T (x - mu)|, inv(C) = L L^T
            dist = dist + v["gauss_weight"] * gauss.distance(query.reshape(-1, query.shape[-1]))
        if v["context_weight"] > 0 and bank is not None:
            excess = test_context[start : start + 16].reshape(-1) - ref_context[idx]
            dist = dist + v["context_weight"] * excess.clamp_min(0)
        if v["coarse"]:
            q_c = test_c[start : start + 16]
            if bank_c is not None:
                dist_c = nearest(q_c.reshape(-1, q_c.shape[-1]), bank_c, vc)[0]
            else:
                dist_c = torch.cat([nearest(q, q, vc, v["zero_shot_k"])[0] for q in q_c])
            dist_c = F.interpolate(dist_c.view(-1, 1, *coarse_grid), size=grid, mode="bilinear", align_corners=False)
            dist = dist + v["coarse_weight"] * dist_c.reshape(dist.shape)
        dist, idx = dist.view(len(samples), -1), idx.view(len(samples), -1)
        up = F.interpolate(dist.view(-1, 1, *grid), size=(SIZE, SIZE), mode=v["up"])[:, 0]
        maps = gaussian_smooth(up, v["sigma"])
        for i, sample in enumerate(samples):
            if v["score"] == "raw_max":
                score = dist[i].max()
            else:
                score = (maps[i] * weights if weights is not None else maps[i]).max()
            if v["reweight"] and bank is not None:
                worst = int(dist[i].argmax())
                score = score * reweighting(query[i, worst], bank[int(idx[i, worst])], bank, v)
            labels.append(sample.label)
            scores.append(float(score))
            if split.has_masks:
                hw = store[key(sample.path)][1]
                amap = F.interpolate(maps[i][None, None], size=hw, mode="bilinear", align_corners=False)[0, 0].numpy()
                mask = masks[key(sample.path)]
                pixels.update(amap, mask)
                for kind, acc in per_type.items():
                    if not sample.label or sample.defect_type == kind:
                        acc.update(amap, mask)
    metrics = dict(image_metrics(labels, scores))
    if split.has_masks:
        metrics.update(pixels.compute())
    for kind, acc in per_type.items():
        metrics[f"pixel_auroc[{kind}]"] = acc.compute()["pixel_auroc"]
    return metrics


def main() -> None:
    global SIZE
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--categories", default="magnetic_tile,mpdd_metal_plate,steel_strip_sd900")
    parser.add_argument("--shots", default="0,1,4")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--cache", default="/tmp/anomalens-features")
    parser.add_argument("--binned", action="store_true", help="binned pixel metrics (faster)")
    parser.add_argument("--patchcore", action="store_true", help="add the whole PatchCore pipeline as a variant")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--size", type=int, default=SIZE, help="model input side for both pipelines (pixels)")
    parser.add_argument(
        "--by-type", action="store_true", help="also print each defect type's pixel AUROC (normals + that type, binned)"
    )
    parser.add_argument("variants", nargs="*", help="JSON dicts of changes to patchknn's pipeline")
    args = parser.parse_args()
    SIZE = args.size  # every function here reads it when called
    torch.set_num_threads(args.threads)
    shots = [int(k) for k in args.shots.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [json.loads(text) for text in args.variants] or ([] if args.patchcore else [{}])
    variants += [PATCHCORE] if args.patchcore else []
    print("| category | shots | variant | image AUROC | pixel AUROC | AUPRO | image AUROC std | seconds |")
    print("|---|---|---|---|---|---|---|---|")
    for category in args.categories.split(","):
        split = load_dataset(args.data, categories=[category])[category]
        masks, loaded = ({} if not split.has_masks else None), None
        for change in variants:
            v = {**PATCHKNN, **change}
            unknown = set(change) - set(PATCHKNN)
            if unknown:
                raise SystemExit(f"unknown factor(s) {sorted(unknown)}; choose from {sorted(PATCHKNN)}")
            features = (tuple(v["blocks"]), v["photometric"])
            if features != loaded:
                store = extract(category, split, Path(args.cache), *features)
                raw_test = [
                    torch.stack([store[key(s.path)][0][i] for s in split.test]).float() for i in range(len(v["blocks"]))
                ]
                net, loaded = None, features
            if v["augment"] != "none" and net is None:  # only augmented references need the backbone here
                net = EfficientNetPatchBackbone(image_size=SIZE, blocks=features[0], neighbourhood=1)
            if masks is None and split.has_masks:
                masks = {key(s.path): load_mask(s, store[key(s.path)][1]) for s in split.test}
            name = "patchcore" if change is PATCHCORE else (json.dumps(change) if change else "patchknn")
            for k in shots:
                if k > len(split.train_good):
                    continue
                start = time.perf_counter()
                runs = [
                    evaluate(
                        split,
                        store,
                        masks,
                        raw_test,
                        sample_references(split, k, s) if k else [],
                        v,
                        s,
                        not args.binned,
                        net,
                        args.by_type,
                    )
                    for s in (seeds if k else seeds[:1])
                ]
                cells = []
                for m in ("image_auroc", "pixel_auroc", "pixel_aupro"):
                    cells.append("N/A" if runs[0].get(m) is None else f"{100 * np.mean([r[m] for r in runs]):.1f}")
                std = (
                    "N/A" if runs[0]["image_auroc"] is None else f"{100 * np.std([r['image_auroc'] for r in runs]):.1f}"
                )
                seconds = time.perf_counter() - start
                print(f"| {category} | {k} | {name} | {' | '.join(cells)} | {std} | {seconds:.0f} |", flush=True)
                types = sorted(m for m in runs[0] if m.startswith("pixel_auroc["))
                if types:  # one line per variant: each defect type's pixel AUROC, mean over the seeds
                    print(
                        "|  |  | pixel AUROC by type: "
                        + ", ".join(f"{m[12:-1]} {100 * np.mean([r[m] for r in runs]):.1f}" for m in types)
                        + " |  |  |  |  |  |"
                    )


if __name__ == "__main__":
    main()
