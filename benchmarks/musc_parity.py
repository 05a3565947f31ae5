"""MuSc: anomalens' LNAMD, MSM and RsCIN against the authors' own functions, on identical random tokens.

    python benchmarks/musc_parity.py --official PATH/TO/MuSc [--images 24] [--grid 12] [--seeds 0,1,2]

PATH/TO/MuSc is a local checkout of https://github.com/xrli-U/MuSc (reviewed at b76b93d). Nothing
of it is copied here: `LNAMD` (models/modules/_LNAMD.py), `MSM` (_MSM.py) and `RsCIN` (_RsCIN.py)
are imported from the checkout and run as they are.

Both sides get the same random ViT tokens: N images x 4 layers x (1 + grid^2) tokens of C
channels, class token first, as `clip_model.encode_image` hands them to LNAMD, and the same unit
image features for RsCIN. The official side is composed as `MuSc.make_category_data` composes it
(inside a method that also loads datasets and backbones, so restated here): for each degree r of
(1, 3, 5) `LNAMD(r=r, feature_dim=C)._embed(tokens)`, each patch divided by its norm, `MSM(Z, 0,
0.3)` per layer, the mean over layers, then the mean over degrees. anomalens runs `lnamd` (degrees
1, 3, 5, the paper's unit patches: `patch_norm="l2"`), `mutual_scores` against every other image
(`choose_partners(..., max_partners=0)`: the paper's rule) with the interval (0, 0.3), and the mean
over the 12 (layer, degree) maps: musc's defaults on the embedded CNN differ (README "musc"), these
are the settings that restore the paper and code.

RsCIN gets the same image scores on both sides (the official ones: each map's maximum, as
`make_category_data` takes it after upsampling) and k = (1, 2, 3). The official function first
min-max normalises the scores; anomalens keeps their units (every row of its re-scoring matrix
sums to 1, so the normalisation is an affine map): the official output is mapped back with the
same affine map before comparing.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from pathlib import Path

import torch

from anomalens.methods.musc.lnamd import lnamd, tokens_to_map
from anomalens.methods.musc.msm import choose_partners, mutual_scores
from anomalens.methods.musc.rscin import rescore
from anomalens.methods.musc.settings import MuScSettings

DEGREES = (1, 3, 5)  # paper and official r_list
LAYERS = 4  # the official features_list has four layers (ViT-L-14-336: 6, 12, 18, 24)
INTERVAL = (0.0, 0.3)  # official topmin_min, topmin_max
NEIGHBOURS = (1, 2, 3)  # official k_score for MVTec AD and BTAD
CONTROLS = {
    "interval 0-0.7 (its default on the embedded CNN)": {"interval": (0.0, 0.7)},
    "8 sampled partners instead of all (its default samples 32)": {"max_partners": 8},
}


def official_functions(checkout: Path):
    sys.path.insert(0, str(checkout))
    from models.modules._LNAMD import LNAMD
    from models.modules._MSM import MSM
    from models.modules._RsCIN import RsCIN

    return LNAMD, MSM, RsCIN


def official_maps(LNAMD, MSM, tokens: list[torch.Tensor]) -> tuple[dict[tuple[int, int], torch.Tensor], torch.Tensor]:
    """Per (layer, degree) MSM scores and the mean map, composed as `make_category_data` does."""
    channels = tokens[0].shape[-1]
    per_map, per_degree = {}, []
    for r in DEGREES:
        embed = LNAMD(device="cpu", r=r, feature_dim=channels, feature_layer=list(range(1, LAYERS + 1)))
        with torch.no_grad():
            features = embed._embed(tokens)
            features /= features.norm(dim=-1, keepdim=True)
        per_layer = []
        for layer in range(LAYERS):
            with contextlib.redirect_stderr(io.StringIO()):  # its tqdm bar
                scores = MSM(Z=features[:, :, layer, :], device="cpu", topmin_min=INTERVAL[0], topmin_max=INTERVAL[1])
            per_map[(layer, r)] = scores.float()
            per_layer.append(scores)
        per_degree.append(torch.stack(per_layer).mean(0))
    return per_map, torch.stack(per_degree).mean(0).float()


def anomalens_maps(
    tokens: list[torch.Tensor], grid: int, interval: tuple[float, float] = INTERVAL, max_partners: int = 0
) -> tuple[dict[tuple[int, int], torch.Tensor], torch.Tensor]:
    layer_maps = [tokens_to_map(t, (grid, grid)) for t in tokens]
    features = lnamd(layer_maps, DEGREES, patch_norm="l2")
    n = tokens[0].shape[0]
    partners = choose_partners([f"image{i}" for i in range(n)], max_partners=max_partners)
    per_map = {key: mutual_scores(z, partners, interval=interval) for key, z in features.items()}
    return per_map, torch.stack(list(per_map.values())).mean(0)


def tower_rows(LNAMD, MSM, arch: str, size: int, seeds: list[int], images: int):
    """The official CLIP tower (MuSc's copy of open_clip, built as its `create_model(..., "openai")`
    builds a model away from its native size: the config at the new size, nn.GELU, the weights'
    positional embeddings resampled by its `resize_pos_embed`) against musc's `ClipLayers` with
    `released_clip`, on the same random weights and images; then each side's tokens through its own
    LNAMD and MSM: (seed, tokens, image feature, mean map, tokens with released_clip off)."""
    import torch.nn.functional as F
    from models.backbone import open_clip as official_clip
    from models.backbone.open_clip.model import resize_pos_embed

    from anomalens.backbones import clip as clip_module
    from anomalens.methods.musc.extract import ClipLayers

    layers = MuScSettings().clip_layers
    config_file = Path(clip_module.__file__).parent / "configs" / f"{arch}.json"
    if config_file.exists():
        official_clip.add_model_config(config_file)
    rows = []
    for seed in seeds:
        torch.manual_seed(seed)
        ours = ClipLayers(arch, None, layers, size, released=True).eval()
        state = dict(ours.clip.model.state_dict())
        config = official_clip.get_model_config(arch)
        config["vision_cfg"]["image_size"] = size
        theirs = official_clip.CLIP(**config).eval()
        resize_pos_embed(state, theirs)
        theirs.load_state_dict(state, strict=False)
        x = torch.randn(images, 3, size, size, generator=torch.Generator().manual_seed(300 + seed))
        with torch.no_grad():
            pooled, tokens = theirs.encode_image(x, list(layers))
            maps, feature = ours(x)
        grid = maps[0].shape[-1]
        token_diff = max(float((m - tokens_to_map(t, (grid, grid))).abs().max()) for m, t in zip(maps, tokens))
        feature_diff = float((feature - F.normalize(pooled, dim=-1)).abs().max())
        _, their_map = official_maps(LNAMD, MSM, [t.clone() for t in tokens])
        our_tokens = [torch.cat([torch.zeros(images, 1, m.shape[1]), m.flatten(2).transpose(1, 2)], 1) for m in maps]
        _, our_map = anomalens_maps(our_tokens, grid)
        plain = ClipLayers(arch, None, layers, size, released=False).eval()
        plain.clip.model.load_state_dict(ours.clip.model.state_dict())
        with torch.no_grad():
            plain_maps, _ = plain(x)
        plain_diff = max(float((m - tokens_to_map(t, (grid, grid))).abs().max()) for m, t in zip(plain_maps, tokens))
        rows.append((seed, token_diff, feature_diff, float((our_map - their_map).abs().max()), plain_diff))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="a checkout of xrli-U/MuSc")
    parser.add_argument("--images", type=int, default=24, help="batch size N")
    parser.add_argument("--grid", type=int, default=12, help="patch grid side")
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--arch", default="test-tiny-24", help="CLIP architecture of the tower check (random weights)")
    parser.add_argument("--size", type=int, default=49, help="its input side (test-tiny-24's own is 28)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    LNAMD, MSM, RsCIN = official_functions(args.official)
    print(
        f"MuSc: anomalens vs xrli-U/MuSc functions, {args.images} images, {LAYERS} layers of "
        f"{1 + args.grid**2} tokens x {args.channels} channels, degrees {DEGREES}, interval {INTERVAL}\n"
    )
    print("| seed | MSM per (layer, degree): max abs diff | mean map | RsCIN scores | map range | score range |")
    print("|---|---|---|---|---|---|")
    for seed in (int(s) for s in args.seeds.split(",")):
        g = torch.Generator().manual_seed(seed)
        # tokens with a shared normal pattern, image noise and a few planted outliers, like a batch of parts
        base = torch.randn(1, 1 + args.grid**2, args.channels, generator=g)
        tokens = []
        for _ in range(LAYERS):
            t = base + 0.5 * torch.randn(args.images, 1 + args.grid**2, args.channels, generator=g)
            t[: args.images // 4, 5:9] += 3.0 * torch.randn(args.images // 4, 4, args.channels, generator=g)
            tokens.append(t * 2.0 + 1.0)
        image_features = torch.nn.functional.normalize(torch.randn(args.images, 32, generator=g) + 1.0, dim=-1)

        theirs, their_map = official_maps(LNAMD, MSM, [t.clone() for t in tokens])
        ours, our_map = anomalens_maps(tokens, args.grid)
        msm_diff = max(float((ours[k] - theirs[k]).abs().max()) for k in theirs)
        map_diff = float((our_map - their_map).abs().max())

        scores = their_map.amax(dim=1).double()
        their_rescored = torch.as_tensor(
            RsCIN(scores.numpy(), list(image_features.numpy()), k_list=list(NEIGHBOURS)), dtype=torch.float64
        )
        low, high = scores.min(), scores.max()
        our_rescored = rescore(scores, image_features, NEIGHBOURS)
        rscin_diff = float((our_rescored - (their_rescored * (high - low) + low)).abs().max())
        print(
            f"| {seed} | {msm_diff:.1e} | {map_diff:.1e} | {rscin_diff:.1e} | "
            f"{float(their_map.min()):.3f}-{float(their_map.max()):.3f} | {float(low):.3f}-{float(high):.3f} |"
        )
    print("\n(MSM scores are distances between unit vectors, 0-2; RsCIN is compared in the scores' own units.)")
    seeds = [int(s) for s in args.seeds.split(",")]
    print(f"\nThe CLIP tower, {args.arch} (random weights) at {args.size} px, blocks {MuScSettings().clip_layers}, "
          f"{args.images} images; each side's tokens through its own LNAMD and MSM:\n")  # fmt: skip
    print("| seed | tokens | image feature | mean map | tokens with released_clip=false (control) |")
    print("|---|---|---|---|---|")
    for seed, token_diff, feature, amap, plain in tower_rows(LNAMD, MSM, args.arch, args.size, seeds, args.images):
        print(f"| {seed} | {token_diff:.1e} | {feature:.1e} | {amap:.1e} | {plain:.1e} |")
    print("\nControls (last seed): anomalens with one setting of its own instead of the paper's, against the same")
    print("official map\n\n| anomalens changed | mean map: max abs diff |\n|---|---|")
    for label, options in CONTROLS.items():
        _, changed = anomalens_maps(tokens, args.grid, **options)
        print(f"| {label} | {float((changed - their_map).abs().max()):.1e} |")


if __name__ == "__main__":
    main()
