"""The FiLo network: frozen CLIP, learnable prompts, MMCI and linear heads per layer, adapter.

Dense path (HQ-Loc): from block `vv_from` (6) on, CLIP's vision tower runs two paths (see
`ClipBackbone.forward`). At each layer l in `layers` (6, 12, 18, 24):

* the V-V path's patch grid goes through MMCI (six convolutions) -> Eq. 2 map M^l_mmci,
* the QKV (normal) path's patch tokens go through a linear layer to the text space -> M^l_lin.

Both kinds of head see CLIP's frozen ln_post first, so the trainable maps start from the
normalised tokens CLIP's own projection would see.

How the QKV linear-head maps enter (`qkv_head`): the paper trains both heads and fuses all
layer maps into M; that is the default "both" (Eq. 3 averages the MMCI and linear maps of every
layer). "train" supervises the linear heads but builds M from MMCI alone; "none" drops them.

Per-layer features: the released code keeps references to tensors that later blocks overwrite in
place, so all its "per-layer" features end up being the last layer's; `ClipBackbone` stores each
layer's own tensor, so layers 6, 12, 18 and 24 really are four depths here.

Variant: "paper" (default, for training our own checkpoints) is described above; "released"
(`FiloConfig.released()`) reproduces the authors' released inference so their trained
checkpoints give their maps: see `released.py` for every difference.

Temperature: cosine similarities are divided by 0.07 (`temperature`, as AnomalyCLIP-style code
does), which keeps the two-class softmax soft enough to train; `temperature=None` uses CLIP's own
logit scale (1/100 for OpenAI weights) instead.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ...backbones.clip import ClipBackbone
from . import released as rel
from .adapter import Adapter, global_logits, global_score
from .mmci import DEFAULT_TEMPERATURE, MMCI, MMCI_KERNELS, class_map, combine_layers, final_map, grid_of, layer_map
from .prompt_learner import PromptLearner, group_features
from .prompts import ABNORMAL_STATES, NORMAL_STATES, PromptSet

QkvHead = Literal["both", "train", "none"]
VARIANTS = ("paper", "released")


@dataclass
class FiloConfig:
    """Architecture of the trainable parts; defaults are the paper's."""

    layers: tuple[int, ...] = (6, 12, 18, 24)
    vv_from: int = 6
    n_ctx: int = 12
    meta_net: bool = True  # CoCoOp (image-conditioned context); False: CoOp
    adapter: str = "paper"  # "paper" (biases, no residual) or "released" (residual, no biases)
    kernels: tuple[tuple[int, int], ...] = MMCI_KERNELS
    temperature: float | None = DEFAULT_TEMPERATURE  # None: CLIP's own logit scale
    sigma: float = 4.0  # Eq. 4 Gaussian, in pixels of the model input
    qkv_head: str = "both"  # "both" | "train" | "none": see the module docstring
    normal_states: tuple[str, ...] = NORMAL_STATES
    abnormal_states: tuple[str, ...] = ABNORMAL_STATES
    variant: str = "paper"  # "paper" | "released": see released.py

    @classmethod
    def released(cls, n_ctx: int = 12) -> FiloConfig:
        """The released code's architecture and inference (for the authors' checkpoints)."""
        return cls(
            layers=rel.RELEASED_LINEAR_LAYERS,
            vv_from=rel.RELEASED_VV_FROM,
            n_ctx=n_ctx,
            meta_net=True,
            adapter="released",
            kernels=MMCI_KERNELS,
            temperature=None,
            sigma=rel.RELEASED_SIGMA,
            qkv_head="both",
            variant="released",
        )

    @property
    def prompt_style(self) -> str:
        return "released" if self.variant == "released" else "paper"

    @property
    def mmci_layers(self) -> tuple[int, ...]:
        return rel.RELEASED_MMCI_LAYERS if self.variant == "released" else tuple(self.layers)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> FiloConfig:
        known = {f for f in cls.__dataclass_fields__}
        values = {k: v for k, v in data.items() if k in known}
        for key in ("layers", "normal_states", "abnormal_states"):
            if key in values:
                values[key] = tuple(values[key])
        if "kernels" in values:
            values["kernels"] = tuple(tuple(k) for k in values["kernels"])
        return cls(**values)


@dataclass
class FiloOutput:
    """What one forward pass gives; maps are at the model input size."""

    text: torch.Tensor  # (B, 2, D) grouped text features [Fn, Fa]
    abnormal_features: list[torch.Tensor]  # per image (Na, D), for the descriptions
    adapted: torch.Tensor  # (B, D) adapter output A
    logits: torch.Tensor  # (B, 2) global logits
    mmci_maps: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, 2, H, W), Eq. 2
    linear_maps: dict[int, torch.Tensor] = field(default_factory=dict)  # layer -> (B, 2, H, W)
    two_class: torch.Tensor | None = None  # (B, 2, H, W), Eq. 3
    anomaly_map: torch.Tensor | None = None  # (B, H, W), Eq. 4
    score: torch.Tensor | None = None  # (B,), Eq. 1

    def supervised_maps(self) -> list[torch.Tensor]:
        """Every per-layer map the local loss sees (MMCI, and linear heads unless dropped)."""
        return [*self.mmci_maps.values(), *self.linear_maps.values()]


class FiloModel(nn.Module):
    """Frozen CLIP plus FiLo's trainable parts; `trainable_state_dict` holds only the latter."""

    def __init__(self, backbone: ClipBackbone, config: FiloConfig | None = None):
        super().__init__()
        self.config = config = config or FiloConfig()
        if config.variant not in VARIANTS:
            raise ValueError(f"unknown FiLo variant {config.variant!r}; use one of {VARIANTS}")
        if config.variant == "released" and (
            tuple(config.layers) != rel.RELEASED_LINEAR_LAYERS or config.vv_from != rel.RELEASED_VV_FROM
        ):
            raise ValueError("variant='released' fixes layers=(6, 12, 18, 24) and vv_from=7")
        if config.qkv_head not in ("both", "train", "none"):
            raise ValueError(f"unknown qkv_head {config.qkv_head!r}; use 'both', 'train' or 'none'")
        lowest = config.vv_from - 1 if config.variant == "released" else config.vv_from  # released: layer 6 too
        bad = [layer for layer in config.layers if not lowest <= layer <= backbone.num_layers]
        if bad:
            raise ValueError(
                f"layers {bad} must lie between vv_from={config.vv_from} and the backbone's "
                f"{backbone.num_layers} blocks"
            )
        self.backbone = backbone
        clip = backbone.model
        text_width = clip.token_embedding.embedding_dim
        width, dim = backbone.width, backbone.embed_dim
        self.prompt_learner = PromptLearner(
            config.n_ctx, text_width, dim, meta_net=config.meta_net, separate_meta_nets=config.variant == "released"
        )
        self.mmci = nn.ModuleDict({str(layer): MMCI(width, dim, config.kernels) for layer in config.mmci_layers})
        self.linear = nn.ModuleDict(
            {} if config.qkv_head == "none" else {str(layer): nn.Linear(width, dim) for layer in config.layers}
        )
        self.adapter = Adapter(dim, config.adapter)

    # ---- parameters ----------------------------------------------------------------------
    @property
    def temperature(self) -> float:
        if self.config.temperature is not None:
            return float(self.config.temperature)
        return 1.0 / float(self.backbone.model.logit_scale.exp())

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Load FiLo's trainable tensors; ValueError naming every missing/unexpected/mis-shaped key."""
        own = self.trainable_state_dict()
        problems = []
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        shapes = [
            f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
            for k, v in own.items()
            if k in state and state[k].shape != v.shape
        ]
        if missing:
            problems.append(f"missing {', '.join(missing)}")
        if unexpected:
            problems.append(f"unexpected {', '.join(unexpected)}")
        if shapes:
            problems.append(f"other shapes {', '.join(shapes)}")
        if problems:
            raise ValueError(f"FiLo checkpoint does not match the model: {'; '.join(problems)}")
        self.load_state_dict(state, strict=False)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Trainable parameters by training role: prompts, dense heads (MMCI + linear), adapter."""
        return {
            "prompts": list(self.prompt_learner.parameters()),
            "dense": [*self.mmci.parameters(), *self.linear.parameters()],
            "adapter": list(self.adapter.parameters()),
        }

    # ---- forward -------------------------------------------------------------------------
    def text_features(
        self, image_embedding: torch.Tensor, prompt_sets: list[PromptSet]
    ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Grouped [Fn, Fa] per image (B, 2, D) and each image's per-prompt abnormal features."""
        bias = self.prompt_learner.image_bias(image_embedding)
        clip, tokenizer = self.backbone.model, self.backbone.tokenizer
        grouped, abnormal = [], []
        for i, prompts in enumerate(prompt_sets):
            fn, fa = self.prompt_learner(clip, tokenizer, prompts, None if bias is None else (bias[0][i], bias[1][i]))
            grouped.append(group_features(fn, fa))
            abnormal.append(fa)
        return torch.stack(grouped), abnormal

    def _dense_maps(self, feats, text: torch.Tensor, size: tuple[int, int]) -> tuple[dict, dict]:
        ln_post = self.backbone.model.visual.ln_post
        t = self.temperature
        mmci_maps, linear_maps = {}, {}
        for layer in self.config.layers:
            vv = grid_of(ln_post(feats.vv[layer]), feats.grid)
            kernel_maps = [class_map(f, text, t) for f in self.mmci[str(layer)](vv)]
            mmci_maps[layer] = layer_map(kernel_maps, size)
            if str(layer) in self.linear:
                tokens = self.linear[str(layer)](ln_post(feats.layers[layer]))
                linear_maps[layer] = layer_map([class_map(grid_of(tokens, feats.grid), text, t)], size)
        return mmci_maps, linear_maps

    def forward(self, images: torch.Tensor, prompt_sets: list[PromptSet], with_maps: bool = True) -> FiloOutput:
        """Run FiLo on (B, 3, S, S) normalised images, one prompt set per image."""
        if len(prompt_sets) != images.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {len(prompt_sets)} prompt sets")
        cfg = self.config
        if cfg.variant == "released":
            return self._forward_released(images, prompt_sets, with_maps)
        if with_maps:
            feats = self.backbone(images, layers=cfg.layers, vv_from=cfg.vv_from)
        else:  # the global branch needs only the class embedding
            feats = self.backbone(images)
        text, abnormal = self.text_features(feats.image_embedding, prompt_sets)
        adapted = self.adapter(feats.image_embedding)
        out = FiloOutput(text, abnormal, adapted, global_logits(adapted, text, self.temperature))
        if not with_maps:
            return out
        out.mmci_maps, out.linear_maps = self._dense_maps(feats, text, tuple(images.shape[-2:]))
        fused = list(out.mmci_maps.values())
        if cfg.qkv_head == "both":
            fused += list(out.linear_maps.values())
        out.two_class = combine_layers(fused)
        out.anomaly_map = final_map(out.two_class, cfg.sigma)
        out.score = global_score(out.logits, out.anomaly_map)
        return out

    def _forward_released(self, images: torch.Tensor, prompt_sets: list[PromptSet], with_maps: bool) -> FiloOutput:
        """The released inference (released.py): maps, score and logits as the authors' code has them."""
        feats = rel.released_features(self.backbone, images)
        adapted = self.adapter(feats.image_embedding)
        text, abnormal = self.text_features(adapted, prompt_sets)  # meta-nets see the adapted embedding
        logits = rel.released_logits(adapted, text)
        out = FiloOutput(text, abnormal, adapted, logits)
        if not with_maps:
            return out
        size = tuple(images.shape[-2:])
        for layer, tokens in zip(rel.RELEASED_LINEAR_LAYERS, feats.linear_inputs):
            head = self.linear[str(layer)](tokens[:, 1:])
            out.linear_maps[layer] = rel.released_class_map(head, text, feats.grid, size)
        for layer, tokens in zip(rel.RELEASED_MMCI_LAYERS, feats.mmci_inputs):
            summed = torch.stack(self.mmci[str(layer)](grid_of(tokens, feats.grid))).sum(dim=0)
            out.mmci_maps[layer] = rel.released_class_map(summed.flatten(2).transpose(1, 2), text, feats.grid, size)
        maps = [*out.linear_maps.values(), *out.mmci_maps.values()]
        out.two_class = torch.stack(maps).mean(dim=0)
        out.anomaly_map = rel.released_anomaly_map(maps, self.config.sigma)
        out.score = rel.released_score(adapted, text, out.anomaly_map)
        return out


def top_descriptions(
    adapted: torch.Tensor, abnormal: torch.Tensor, prompts: PromptSet, k: int = 5
) -> list[tuple[str, float]]:
    """The k defect descriptions closest to the image: cosine of A with each abnormal prompt,
    the best state per description, as (sentence without the learned context, similarity)."""
    sims = F.normalize(abnormal, dim=-1) @ F.normalize(adapted, dim=-1)
    best: dict[str, tuple[str, float]] = {}
    for sentence, description, sim in zip(prompts.abnormal, prompts.descriptions, sims.tolist()):
        if description not in best or sim > best[description][1]:
            best[description] = (sentence, sim)
    return sorted(best.values(), key=lambda item: -item[1])[:k]
