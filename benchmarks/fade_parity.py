"""FADE: anomalens against the authors' released code, on identical random weights and images.

    python benchmarks/fade_parity.py --official PATH/TO/BMVC-FADE [--arch ViT-B-16-plus-240]

PATH/TO/BMVC-FADE is a local checkout of https://github.com/BMVC-FADE/BMVC-FADE (reviewed at
43d237b); `gem-torch` must be installed (`pip install gem-torch`). Nothing of the official
code is copied here: its functions are imported from the checkout, and its prompt files are
read from the checkout's `prompts/` folder by its own `build_text_model`.

Both sides get one randomly initialised open_clip model (the same weights: the official side
wraps a deep copy in gem-torch's `GEMWrapper`, depth 7 and one self-self iteration as its
`create_gem_model` defaults) and the same normalised input tensors at every scale (made by
anomalens' resize; the official dataset class, which needs an MVTec folder, is not used).
The official side runs what `scripts/run_fade.py` runs per image, with its defaults and the
settings its README gives:

* text: `build_text_model(..., "average")` on `winclip_prompt.json` with the class name
  (classification) and on `winclip_prompt.json` + `chatgpt3.5_prompt1..5.json` with
  "object" (segmentation); anomalens is given the five chatgpt files with `--prompts`
  (its WinCLIP ensemble is generated; it holds the same 154 + 88 prompts as the file);
* `extract_image_embeddings`, `predict_classification` (CLIP class token at 240 px),
  `predict_segmentation` (language: GEM patches; vision: GEM patches against the query's own
  patches with k = 2 zero-shot, CLIP patches against the references' few-shot, built with
  `build_image_models` / `extract_ref_patch_embeddings` / `extract_query_patch_embeddings`);
* the combination `run_fade.py` does inline in `main()` (not importable; restated below in
  `released_combination`): vision maps x multiplier (80 zero-shot with weight 0.5, 3.5
  few-shot with weight 0.85, as the README's commands), score = language zero-shot and
  (language + max vision) / 2 few-shot, everything clipped to [0, 1].

Maps are compared on the image grid: the official map (finest patch grid, float, before its
uint8 post-processing) is brought to the image size with the same bilinear resize anomalens
uses. Shims, only where the official code needs what this environment lacks:

* `xgboost` (imported by `utils/text_model.py`, used only by its "xgboost" text model, not
  by "average") is replaced by a stub module;
* gem-torch 1.0.1 was written for open_clip 2.x, whose transformer took sequence-first
  tokens: its `modified_vit_forward` permutes to (L, N, D) before `transformer(x)`. open_clip
  3.x blocks are batch-first, so on the official side the blocks gem-torch does not replace
  (all but the last 6) get `attn.batch_first = False`, which restores what the authors ran
  (the same adaptation as the GEM parity test in tests/test_clip.py).

The second block of rows runs anomalens with the earlier text behaviour (prompts encoded as
they are, class embeddings re-normalised, cleaned class names, deduplicated lists) to show
what the released defaults change.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

SEGMENTATION_FILES = [f"chatgpt3.5_prompt{i}.json" for i in range(1, 6)]
EARLIER_TEXT = {
    "prompt_template": "none",
    "renormalize_class_embedding": True,
    "class_name": "clean",
    "keep_duplicate_prompts": False,
}


def import_official(checkout: Path):
    """The official functions, imported from the checkout (with the xgboost stub if needed)."""
    if not (checkout / "utils" / "text_model.py").exists():
        sys.exit(f"{checkout}: not a checkout of BMVC-FADE (no utils/text_model.py)")
    try:
        import xgboost  # noqa: F401
    except ImportError:
        stub = types.ModuleType("xgboost")

        class XGBClassifier:  # only the "xgboost" text model uses it; "average" never does
            def __init__(self, *args, **kwargs):
                raise RuntimeError("xgboost is a stub in benchmarks/fade_parity.py")

        stub.XGBClassifier = XGBClassifier
        sys.modules["xgboost"] = stub
    for name in [m for m in sys.modules if m == "datasets" or m.startswith(("datasets.", "utils.")) or m == "utils"]:
        del sys.modules[name]  # the checkout's top-level packages, not same-named installed ones
    sys.path.insert(0, str(checkout))
    from utils import anomaly_detection, embeddings, image_model, text_model

    return types.SimpleNamespace(
        build_text_model=text_model.build_text_model,
        extract_image_embeddings=embeddings.extract_image_embeddings,
        predict_classification=anomaly_detection.predict_classification,
        predict_segmentation=anomaly_detection.predict_segmentation,
        build_image_models=image_model.build_image_models,
        extract_ref_patch_embeddings=image_model.extract_ref_patch_embeddings,
        extract_query_patch_embeddings=image_model.extract_query_patch_embeddings,
    )


def released_combination(lang_score, lang_map, vision_map, few_shot: bool):
    """run_fade.py main(): classification-mode and segmentation-mode "both", README settings."""
    if few_shot:
        vision_map = vision_map * 3.5
        score = (lang_score + np.max(vision_map, axis=(1, 2))) / 2
        seg = (1 - 0.85) * lang_map + 0.85 * vision_map
    else:
        vision_map = vision_map * 80.0
        score = lang_score
        seg = (1 - 0.5) * lang_map + 0.5 * vision_map
    return np.clip(score, 0, 1), np.clip(seg, 0, 1)


class _ListDataset(torch.utils.data.Dataset):
    """What extract_ref_patch_embeddings reads from its dataset: {"image": {size: tensor}}."""

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def official_outputs(off, gem_model, inputs, refs, sizes, cls_size, classname, checkout, few_shot, seed):
    prompts = checkout / "prompts"
    cls_model = off.build_text_model(
        gem_model, [prompts / "winclip_prompt.json"], classname.replace("_", " "), "average"
    )
    seg_model = off.build_text_model(
        gem_model, [prompts / "winclip_prompt.json", *(prompts / f for f in SEGMENTATION_FILES)], "object", "average"
    )
    patch_size = gem_model.model.visual.patch_size
    all_sizes = sorted({cls_size, *sizes})
    ref_models = None
    if few_shot:
        dataset = _ListDataset([{"image": {sz: r[sz] for sz in sizes}} for r in refs])
        ref_patches = off.extract_ref_patch_embeddings(dataset, gem_model, "clip", len(refs), seed, "cpu")
        ref_models = off.build_image_models(ref_patches, False)
    scores, maps = [], []
    for x in inputs:  # one image per step, as run_fade.py's batch_size=1
        emb = off.extract_image_embeddings({sz: x[sz][None] for sz in all_sizes}, gem_model, "cpu")
        lang_score = off.predict_classification(cls_model, emb, cls_size, "clip")
        lang_map = off.predict_segmentation(seg_model, emb, sizes, "gem", patch_size, "language")
        if few_shot:
            vision_map = off.predict_segmentation(ref_models, emb, sizes, "clip", patch_size, "vision")
        else:
            query = off.extract_query_patch_embeddings(emb, sizes, "gem")
            image_models = off.build_image_models(query, True)
            vision_map = off.predict_segmentation(image_models, emb, sizes, "gem", patch_size, "vision")
        score, seg = released_combination(lang_score, lang_map, vision_map, few_shot)
        scores.append(float(score[0]))
        maps.append(seg[0])
    return np.array(scores), maps


def main() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=UserWarning, module="torch.utils.data")
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--official", type=Path, required=True, help="local checkout of BMVC-FADE/BMVC-FADE")
    ap.add_argument("--arch", default="ViT-B-16-plus-240", help="open_clip architecture (random weights)")
    ap.add_argument("--sizes", default="240,448,896", help="segmentation input sizes")
    ap.add_argument("--classification-size", type=int, default=240)
    ap.add_argument("--images", type=int, default=2, help="query images")
    ap.add_argument("--shots", type=int, default=2)
    ap.add_argument("--category", default="metal_nut")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    checkout = args.official.resolve()
    off = import_official(checkout)

    import gem
    import open_clip

    from anomalens.backbones.clip import ClipBackbone
    from anomalens.images import LoadedImage, input_box, map_to_image, to_model_input
    from anomalens.methods.fade import Fade, FadeSettings
    from anomalens.text.features import TextFeatureCache

    sizes = tuple(int(s) for s in args.sizes.split(","))
    torch.manual_seed(args.seed)
    model = open_clip.create_model(args.arch, pretrained=None).eval()
    gem_model = gem.GEMWrapper(copy.deepcopy(model), open_clip.get_tokenizer(args.arch), depth=7, ss_attn_iter=1)
    blocks = gem_model.model.visual.transformer.resblocks
    for block in blocks[: len(blocks) - 6]:  # open_clip 3.x adaptation, see the module docstring
        block.attn.batch_first = False
    backbone = ClipBackbone(model, args.arch, None)

    rng = np.random.default_rng(args.seed)
    images = [
        LoadedImage(f"query{i}.png", rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)) for i in range(args.images)
    ]
    refs = [LoadedImage(f"ref{i}.png", rng.integers(0, 256, (300, 260, 3), dtype=np.uint8)) for i in range(args.shots)]
    all_sizes = sorted({args.classification_size, *sizes})

    def tensors(img):
        return {sz: to_model_input(img.rgb, sz, backbone.mean, backbone.std)[0] for sz in all_sizes}

    query_inputs, ref_inputs = [tensors(i) for i in images], [tensors(r) for r in refs]
    finest = max(sizes)
    grid = finest // backbone.patch_size

    def ours(extra: dict):
        settings = FadeSettings(
            backbone=args.arch,
            weights="random",
            category=args.category,
            prompts=tuple(str(checkout / "prompts" / f) for f in SEGMENTATION_FILES),
            classification_size=args.classification_size,
            segmentation_sizes=sizes,
            **extra,
        )
        return Fade(settings, backbone=backbone, text_cache=TextFeatureCache(cache_dir=None))  # shared weights

    print(
        f"official checkout: {checkout}; {args.arch}, random weights (seed {args.seed}); sizes {sizes}; "
        f"{args.images} query images 300x260, {args.shots} references",
        flush=True,
    )
    fades = {"defaults (released behaviour)": ours({}), "earlier anomalens text": ours(EARLIER_TEXT)}
    default = fades["defaults (released behaviour)"]
    rows = []
    for shots in (0, args.shots):
        start = time.perf_counter()
        with torch.inference_mode():
            default.fit(refs[:shots])
            encoded = default.encode(images)  # the vision side is shared; the variants differ in text only
            banks = {size: default.bank_.banks[str(size)] for size in encoded["scales"]} if shots else None
            outputs = {
                label: [f._score(img, encoded, b, banks) for b, img in enumerate(images)] for label, f in fades.items()
            }
        ours_seconds = time.perf_counter() - start
        start = time.perf_counter()
        off_scores, off_maps = official_outputs(
            off,
            gem_model,
            query_inputs,
            ref_inputs[:shots],
            sizes,
            args.classification_size,
            args.category,
            checkout,
            shots > 0,
            args.seed,
        )
        official_seconds = time.perf_counter() - start
        for label, mine in outputs.items():
            score_diff = max(abs(m.score - o) for m, o in zip(mine, off_scores))
            map_diff = 0.0
            for img, m, o in zip(images, mine, off_maps):
                box = input_box(*img.size_hw, finest, "squash")
                official_image_map = map_to_image(torch.from_numpy(o).view(grid, grid), box, finest, img.size_hw)
                map_diff = max(map_diff, float(np.abs(m.anomaly_map - official_image_map).max()))
            off_range = (min(float(o.min()) for o in off_maps), max(float(o.max()) for o in off_maps))
            rows.append((label, shots, score_diff, map_diff, off_range))
        print(f"{shots}-shot: anomalens {ours_seconds:.0f} s, official {official_seconds:.0f} s", flush=True)
    print()
    print("| anomalens text settings | shots | max abs diff image score | max abs diff map | official map range |")
    print("|---|---|---|---|---|")
    for label, shots, score_diff, map_diff, (lo, hi) in sorted(
        rows, key=lambda r: r[0] != "defaults (released behaviour)"
    ):
        print(f"| {label} | {shots} | {score_diff:.1e} | {map_diff:.1e} | {lo:.3f}-{hi:.3f} |")


if __name__ == "__main__":
    main()
