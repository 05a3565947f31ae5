"""FiLo: anomalens' released variant against the authors' own code, on identical random weights and images.

    python benchmarks/filo_parity.py --official PATH/TO/FiLo [--size 49] [--seeds 0,1,2]
    python benchmarks/filo_parity.py --official PATH/TO/FiLo --arch ViT-L-14-336 --size 518 --seeds 0 --images 1

PATH/TO/FiLo is a local checkout of https://github.com/CASIA-IVA-Lab/FiLo (reviewed at 36ff29c).
Nothing of the official code is copied here: `models/FiLo.py` and its `models/vv_open_clip` (the
authors' modified open_clip, with the V-V "surgery" of the last 18 blocks) are imported from the
checkout and run as they are.

The official side:

* CLIP is built the way the released `create_model` builds ViT-L-14-336 at 518 px from OpenAI
  weights: the architecture's config with the new image size, `CLIP(**config)` (nn.GELU: the
  config has no quick_gelu), then the weights with the positional embeddings resampled by its own
  `resize_pos_embed`. The weights are anomalens' seeded random CLIP of the tiny 24-block
  architecture (`test-tiny-24`: real weights cannot be had here), registered with the official
  factory through `add_model_config`.
* The `FiLo` module: its `__init__` hard-codes ViT-L-14's widths (1024 -> 768), so the script
  assembles the same attributes with the architecture's widths from the official classes
  (`CovLayer`, `LinearLayer`, `Adapter`, `TextEncoder`, `PromptLearner_normal`,
  `PromptLearner_abnormal`, initialised by their own code from a seed) and calls the official
  `FiLo.forward`. The category's abnormal states are the released template
  `"abnormal {} " + "with {}".format(description)` on the given descriptions plus the official
  `status_abnormal_winclip`.
* Its trainable state is saved as a released checkpoint (`{"filo": state_dict}`, the frozen CLIP
  copies included) and anomalens reads it with `load_checkpoint` / `load_into`, as it reads the
  authors' `.pth` files.
* After `FiLo.forward(items, with_adapter=True, positions=[position])`, one image per call as
  `test.py` runs it, the script restates `test.py`'s lines after the forward (inside its
  `test()`, not importable): each of the seven maps becomes
  `GaussianBlur(3, 4.0)((M[:, 1] - M[:, 0] + 1) / 2)`, the maps are averaged, and the image score
  is `(text_probs.flatten()[1] + max map) / 2` (before the box suppression, which needs Grounding
  DINO's boxes: its 0.7 outside boxes is the same rule in both, `outside_box_weight`).

The anomalens side is `FiloConfig.released()` through `build_backbone(..., variant="released")`,
`build_model`, `load_into` and `FiloModel.forward` on `build_prompts(..., style="released")`.
Both sides get the same normalised input tensors. Printed: the largest absolute difference of
the vision tower's tensors (the seven the heads read), the image embedding, the final maps and
the image scores, for each seed and position. Then stage 1's training loss: the official
`FocalLoss` and `BinaryDiceLoss` (`utils/loss.py`) called as `train.py` calls them at its batch size
of 1, against anomalens' `local_loss` with `dice_unit="row"` (the released loop: the squeezed
(H, W) mask makes Dice per row) and `"image"` (the paper, anomalens' default).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace

import torch
import torchvision

from anomalens.backbones import clip as clip_module
from anomalens.methods.filo.checkpoint import build_backbone, build_model, load_checkpoint, load_into
from anomalens.methods.filo.losses import DICE_UNITS, local_loss
from anomalens.methods.filo.model import FiloConfig
from anomalens.methods.filo.prompts import build_prompts
from anomalens.methods.filo.released import RELEASED_LINEAR_LAYERS, released_features

TINY_ARCH = "test-tiny-24"
CATEGORY = "pcb1"  # the official class map turns it into "pcb", as anomalens' released class name does
DESCRIPTIONS = ["bent component", "burnt area", "missing solder"]
POSITIONS = ("center", "top left", "bottom right")
N_CTX = 12  # the authors' --n_ctx


def official_modules(checkout: Path):
    sys.path.insert(0, str(checkout))
    from models import FiLo as official
    from models import vv_open_clip
    from models.vv_open_clip.model import resize_pos_embed

    return official, vv_open_clip, resize_pos_embed


def official_clip(vv_open_clip, resize_pos_embed, arch: str, weights: dict[str, torch.Tensor], size: int):
    """CLIP as the released `create_model(..., pretrained="openai")` builds it at another image size."""
    config_file = Path(clip_module.__file__).parent / "configs" / f"{arch}.json"
    if config_file.exists():  # anomalens' test architectures; the real ones are in the checkout's registry
        vv_open_clip.add_model_config(config_file)
    config = vv_open_clip.get_model_config(arch)
    config["vision_cfg"]["image_size"] = size
    model = vv_open_clip.CLIP(**config)
    state = dict(weights)
    resize_pos_embed(state, model)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise SystemExit(
            f"the official CLIP does not take anomalens' weights: missing {missing}, unexpected {unexpected}"
        )
    return model.eval(), config


def official_filo(official, vv_open_clip, arch: str, clip, config: dict, size: int, seed: int):
    """The official FiLo module with the architecture's widths (its __init__ hard-codes ViT-L-14's)."""
    width, embed = config["vision_cfg"]["width"], config["embed_dim"]
    tokenizer = vv_open_clip.get_tokenizer(arch)
    status = {CATEGORY: ["abnormal {} " + f"with {d}" for d in DESCRIPTIONS] + official.status_abnormal_winclip}
    torch.manual_seed(seed)
    filo = official.FiLo.__new__(official.FiLo)
    torch.nn.Module.__init__(filo)
    filo.args = SimpleNamespace(features_list=list(RELEASED_LINEAR_LAYERS), image_size=size)
    filo.device = "cpu"
    filo.clip_model = clip
    filo.tokenizer = tokenizer
    filo.decoder_cov = official.CovLayer(width, embed, 3)
    filo.decoder_linear = official.LinearLayer(width, embed, 4)
    filo.text_encoder = official.TextEncoder(clip)
    filo.normal_prompt_learner = official.PromptLearner_normal(
        [CATEGORY], official.status_normal, clip, tokenizer, embed, N_CTX, "cpu"
    )
    filo.abnormal_prompt_learner = official.PromptLearner_abnormal(
        [CATEGORY], status, clip, tokenizer, embed, N_CTX, "cpu"
    )
    filo.adapter = official.Adapter(embed)
    with torch.no_grad():  # the default inits leave biases small: spread every trainable tensor
        for name, p in filo.named_parameters():
            if not name.startswith(("clip_model.", "text_encoder.")):
                p.add_(torch.randn_like(p) * (0.02 if name.endswith(".ctx") else 0.1))
    return filo.eval()


def official_run(filo, image: torch.Tensor, position: str) -> tuple[torch.Tensor, float]:
    """`test.py` for one image without boxes: the forward, then its blur, mean and score lines."""
    blur = torchvision.transforms.GaussianBlur(3, 4.0)
    with torch.no_grad():
        text_probs, maps = filo({"img": image, "cls_name": [CATEGORY]}, with_adapter=True, positions=[position])
        maps = [blur((m[:, 1, :, :] - m[:, 0, :, :] + 1) / 2) for m in maps]
        final = torch.mean(torch.stack(maps, dim=0), dim=0)
    return final[0], (text_probs.flatten()[1].item() + final.max().item()) / 2


def control_rows(model, filo, images: torch.Tensor) -> list[tuple[str, float, float]]:
    """Differences when one released rule is changed on the anomalens side (the official side is "center")."""
    their_map, their_score = official_run(filo, images[:1], "center")
    rows = []

    def compare(label: str, position: str = "center") -> None:
        with torch.no_grad():
            out = model(images[:1], [build_prompts(CATEGORY, DESCRIPTIONS, position, style="released")])
        rows.append((label, max_diff(out.anomaly_map[0], their_map), abs(float(out.score[0]) - their_score)))

    compare("another position word (top left)", "top left")
    model.backbone.pos_embed_antialias = True
    compare("positional embeddings resampled with antialiasing (anomalens' CLIP default)")
    model.backbone.pos_embed_antialias = False
    sigma = model.config.sigma
    model.config.sigma = 2.0
    compare("blur sigma 2 instead of 4")
    model.config.sigma = sigma
    return rows


def loss_rows(seeds: list[int], size: int) -> list[tuple[int, str, float, float]]:
    """Stage 1's local loss as the official `train.py` computes it (batch 1, the mask squeezed to
    (H, W), its `FocalLoss()` and `BinaryDiceLoss()` on each of the seven maps) against anomalens'
    `local_loss`: (seed, dice unit, anomalens loss, official loss)."""
    from utils.loss import BinaryDiceLoss, FocalLoss  # the checkout's utils/loss.py

    focal, dice = FocalLoss(), BinaryDiceLoss()
    rows = []
    for seed in seeds:
        g = torch.Generator().manual_seed(200 + seed)
        maps = [torch.softmax(3 * torch.randn(1, 2, size, size, generator=g), dim=1) for _ in range(7)]
        mask = torch.zeros(1, 1, size, size)
        mask[..., size // 4 : size // 2, size // 3 : size // 2 + 3] = 1.0  # a defect in some rows only
        gt = mask.squeeze()  # as train.py: (H, W) at batch size 1
        official = sum(focal(m, gt) + dice(m[:, 1, :, :], gt) + dice(m[:, 0, :, :], 1 - gt) for m in maps)
        for unit in DICE_UNITS:
            ours = sum(local_loss(m, mask[:, 0], dice_unit=unit) for m in maps)
            rows.append((seed, unit, float(ours), float(official)))
    return rows


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--official", type=Path, required=True, help="a checkout of CASIA-IVA-Lab/FiLo")
    parser.add_argument("--arch", default=TINY_ARCH, help="CLIP architecture (ViT-L-14-336: the released one)")
    parser.add_argument("--size", type=int, default=49, help="input side (the tiny model's own is 28: resampled)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--images", type=int, default=2, help="images per seed")
    args = parser.parse_args()
    torch.set_num_threads(2)
    official, vv_open_clip, resize_pos_embed = official_modules(args.official)
    rows = []
    seeds = [int(s) for s in args.seeds.split(",")]
    for seed in seeds:
        ours_backbone = build_backbone(args.arch, None, args.size, seed=seed, variant="released")
        weights = ours_backbone.model.state_dict()
        clip, config = official_clip(vv_open_clip, resize_pos_embed, args.arch, weights, args.size)
        filo = official_filo(official, vv_open_clip, args.arch, clip, config, args.size, seed)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "filo_official_random.pth"
            torch.save({"filo": filo.state_dict()}, path)
            info, state = load_checkpoint(path)
        model = build_model(ours_backbone, FiloConfig.from_dict(info["model"])).eval()
        load_into(model, state, str(path))
        images = torch.randn(args.images, 3, args.size, args.size, generator=torch.Generator().manual_seed(100 + seed))

        # the vision tower: the seven tensors the heads read, and the image embedding
        with torch.no_grad():
            pooled, tokens = filo.clip_model.encode_image(images, list(RELEASED_LINEAR_LAYERS))
        feats = released_features(model.backbone, images)
        tower = max(
            [max_diff(o, t) for o, t in zip(feats.linear_inputs, tokens[0::2])]
            + [max_diff(o, t) for o, t in zip(feats.mmci_inputs, tokens[1::2])]
        )
        embedding = max_diff(feats.image_embedding, pooled[:, 0, :])
        for position in POSITIONS:
            prompts = build_prompts(CATEGORY, DESCRIPTIONS, position, style="released")
            with torch.no_grad():
                out = model(images, [prompts] * len(images))
            for b in range(images.shape[0]):
                their_map, their_score = official_run(filo, images[b : b + 1], position)
                rows.append(
                    (seed, position, b, tower, embedding, max_diff(out.anomaly_map[b], their_map),
                     abs(float(out.score[b]) - their_score), float(their_map.std()))
                )  # fmt: skip
    controls = control_rows(model, filo, images)
    print(f"FiLo released variant vs CASIA-IVA-Lab/FiLo, {args.arch} (random weights), {args.size} px input, "
          f"{len(DESCRIPTIONS)} descriptions, n_ctx {N_CTX}\n")  # fmt: skip
    print("| seed | position | image | tower tokens | image embedding | final map | image score | map std |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, position, b, tower, emb, amap, score, std in rows:
        print(f"| {seed} | {position} | {b} | {tower:.1e} | {emb:.1e} | {amap:.1e} | {score:.1e} | {std:.3f} |")
    worst = max(max(r[3:7]) for r in rows)
    print(f"\nlargest difference over all rows: {worst:.1e}")
    print("\nStage 1's local loss (seven random two-class maps, a rectangular defect) as the official train.py")
    print("computes it, against anomalens' local_loss with each Dice unit:\n")
    print("| seed | anomalens dice_unit | anomalens loss | official loss | difference |\n|---|---|---|---|---|")
    for seed, unit, ours, theirs in loss_rows(seeds, args.size):
        print(f"| {seed} | {unit} | {ours:.6f} | {theirs:.6f} | {abs(ours - theirs):.1e} |")
    print("\nControls (seed of the last row, image 0): the comparison tells a change of the released rules apart")
    print("\n| anomalens changed | final map | image score |\n|---|---|---|")
    for label, amap, score in controls:
        print(f"| {label} | {amap:.1e} | {score:.1e} |")


if __name__ == "__main__":
    main()
