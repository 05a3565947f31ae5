"""`patchknn`: FADE's vision guidance alone, on any backbone with patch features, with PatchCore's scoring.

Few-shot: patches of the reference images (by default also mirrored and half-turned, and reduced by a greedy
k-centre coreset to a share of the references' own patches) form the memory bank and each query patch scores
its distance to its k-th nearest one (`few_shot_k`: the 3rd with a few references on EfficientNet, else the
nearest; `patch_distances.few_shot_rank`). Zero-shot: each query patch against the query's own patches. The
patch map is upsampled to the model input and smoothed with a Gaussian (PatchCore: sigma 4); the image score
is its maximum (or the mean of its top fraction), optionally reweighted by PatchCore's neighbourhood density.
Elongated images are covered by square tiles (`anomalens.tiling`); with references the model side follows
their resolution (`model_side`). The EfficientNet default adds each block's log length beside the unit
directions with references (`length_weight`); `magnitudes` and `coarse_weight` are opt-ins for textures and
large defects; `fused_recipe` runs a second recipe and fuses the two maps in units of their normal spread
(`recipe_fusion`). Each is measured in the README ("`patchknn` on `../shared/data`").
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import torch

from ..backbones import create_patch_backbone
from ..geometry import to_model_input
from ..images import LoadedImage
from ..inspection_region import apply_to_map, counted_pixels
from ..scoring import MemoryBank
from ..tiling import assemble, crop, tile_boxes
from . import patchknn_references as reference_bank
from . import recipe_fusion as fusion
from .base import Method, MethodOutput, register_method
from .patch_distances import (
    CoarseLayout,
    coarse_blocks,
    few_shot_rank,
    length_weight,
    score_image,
)
from .patchknn_references import REUSED_REFERENCES, EncodedReference, Layout
from .patchknn_settings import (
    DEFAULT_IMAGE_SIZE,
    DEFAULT_SIDE_UP_TO,
    MODEL_SIDE_STEP,
    PatchKnnSettings,
    coreset_target,
    fused_partner_recipe,
    model_side,
    reference_augmentation,
    side_up_to,
)

__all__ = [  # the settings' names stay importable from here, where the method is
    "DEFAULT_IMAGE_SIZE",
    "DEFAULT_SIDE_UP_TO",
    "MODEL_SIDE_STEP",
    "Layout",
    "PatchKnn",
    "PatchKnnSettings",
    "coreset_target",
    "model_side",
    "reference_augmentation",
    "score_image",
    "side_up_to",
]


# the state's entry for the few-shot rank `fit` resolved (`few_shot_rank`): the bank is scored with it
RANK_KEY = "few_shot_k"


@register_method
class PatchKnn(Method):
    name = "patchknn"
    Settings = PatchKnnSettings
    supports_region = True
    # predict keeps no state between calls: `anomalens.inspection` may score two batches in two threads
    concurrent_predict = True

    def __init__(self, settings: PatchKnnSettings, backbone: torch.nn.Module | None = None):
        super().__init__(settings)
        self.backbone = (
            backbone
            if backbone is not None
            else create_patch_backbone(
                settings.backbone,
                image_size=settings.image_size,
                weights=settings.weights,
                blocks=settings.blocks,
                neighbourhood=settings.neighbourhood,
                clip_layers=settings.clip_layers,
                magnitudes=settings.magnitudes,
                length_weight=length_weight(settings),
                length_log=settings.length_log,
                length_blocks=settings.length_blocks,
                coarse_blocks=coarse_blocks(settings),
            )
        )
        self.bank_ = MemoryBank()
        # after fit: the references, each bank patch's reference, and with a few references their features
        self._bank_source: tuple[list[LoadedImage], torch.Tensor, list | None] | None = None
        self._held_out_maps: tuple = (None, {})  # the settings they were made with, maps by reference index
        # what was asked for: `fit` may raise the model side (`model_side`) and always starts from this
        self.requested_settings = settings
        # `fused_recipe`: the second patchknn (built now, so a recipe the backbone cannot run is refused
        # at once) and, once fitted, where each one's maps lie on the references
        fused = fused_partner_recipe(settings) != "none"
        self.partner = PatchKnn(fusion.partner_settings(settings)) if fused else None
        self.region = self.region  # (the partner's too)
        # one backbone pass for both when the partner reads the same network (its blocks kept from ours,
        # from the first fit on: zero-shot does not pay for them)
        self._shared_pass = self.partner is not None and fusion.shares_pass(self.backbone, self.partner.backbone)
        self.fusion_levels_: tuple[fusion.MapLevel, fusion.MapLevel] | None = None

    @property
    def region(self):
        return self._region

    @region.setter
    def region(self, value) -> None:
        # the partner reads the same pixels: its bank and scores leave the same areas out
        self._region = value
        if getattr(self, "partner", None) is not None:
            self.partner.region = value

    def to(self, device: str | torch.device) -> PatchKnn:
        super().to(device)
        if self.partner is not None:
            self.partner.to(device)
        return self

    @property
    def coarse_layout(self) -> CoarseLayout | None:
        """Which trailing feature channels are the coarse map's, and its grid (None without one)."""
        channels = getattr(self.backbone, "coarse_channels", 0)
        if not channels:
            return None
        return CoarseLayout(channels, self.backbone.coarse_grid(self.settings.image_size))

    def model_inputs(self, img: LoadedImage) -> tuple[list[torch.Tensor], Layout]:
        """The normalised (3, S, S) inputs of one image (one per tile) and its layout."""
        s = self.settings
        tiles = tile_boxes(*img.size_hw, s.tile_above_aspect)
        inputs, boxes = [], []
        for tile in tiles:
            x, box = to_model_input(crop(img.rgb, tile), s.image_size, self.backbone.mean, self.backbone.std, s.resize)
            inputs.append(x)
            boxes.append(box)
        if self.region is None:
            return inputs, Layout(img.size_hw, tiles, boxes)
        counted = counted_pixels(self.region, img.size_hw, tiles, boxes, s.image_size, s.region_margin)
        return inputs, Layout(img.size_hw, tiles, boxes, *counted)

    def encode_batch(self) -> int:
        """Inputs per backbone pass. On the CPU one 256 px image per pass keeps its activations in cache:
        28 ms/image against 47 at 8 per pass (EfficientNet-Lite0, one thread); the results are identical."""
        return self.settings.batch_size or (1 if self.device.type == "cpu" else 8)

    def _encode(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        b = self.encode_batch()
        return torch.cat(
            [self.backbone(torch.stack(inputs[i : i + b]).to(self.device)) for i in range(0, len(inputs), b)]
        ).cpu()

    def _features(self, images: list[LoadedImage]) -> tuple[list[torch.Tensor], list[Layout]]:
        """Per image: (T, h, w, C) features of its T tiles, and its layout."""
        inputs, layouts = zip(*(self.model_inputs(img) for img in images)) if images else ((), ())
        feats = self._encode([x for per_image in inputs for x in per_image])
        counts = [len(per_image) for per_image in inputs]
        return list(torch.split(feats, counts)), list(layouts)

    def reference_patches(self, img: LoadedImage, augment: str | None = None) -> torch.Tensor:
        """(P, C) bank patches of one reference: every tile, in every augmentation (default: `augment`;
        a set of references takes `reference_augmentation`). With an inspection region, only the
        patches whose cells count: ignored parts (a serial number differs on every part) would take the
        coreset's places and widen the bank's Gaussian."""
        mode = self.settings.augment if augment is None else augment
        return self._encoded_reference(img, mode)[0].patches

    def _encoded_reference(self, img: LoadedImage, augment: str, both: bool = False) -> list[EncodedReference]:
        return reference_bank.encode_reference(self, img, augment, both)

    def build_bank(self, per_reference: list[torch.Tensor]) -> torch.Tensor:
        """All references' patches as one bank, reduced by greedy k-centre (`coreset_target`)."""
        return self.bank_with_origin(per_reference)[0]

    def bank_with_origin(self, per_reference: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """The bank of `build_bank` and, per bank patch, the index of the reference it came from."""
        return reference_bank.bank_with_origin(self.settings, per_reference)

    def _fit(self, references: list[LoadedImage], encoded: list[EncodedReference] | None = None) -> None:
        """`encoded`: the references already through the backbone (the partner's, from our pass)."""
        # indexing, not iterating: a ReportingList reports progress when it is iterated
        short_sides = [min(references[i].size_hw) for i in range(len(references))]
        self.use_image_size(model_side(self.requested_settings, short_sides))
        self.use_rank_for(len(references))
        self.bank_ = MemoryBank()
        self.num_references = len(references)
        self._bank_source = None
        self._held_out_maps = (None, {})
        augment = reference_augmentation(self.settings, len(references))
        both = encoded is None and reference_bank.fit_shares_pass(self, short_sides, augment)
        if both:
            self._read_partner_blocks()
        kept, ours, theirs = [], [], []
        for i, r in enumerate(references):  # one pass: `references` may report progress as it is iterated
            kept.append(r)
            if encoded is not None:
                ours.append(encoded[i])
            else:
                ours_and_theirs = self._encoded_reference(r, augment, both)
                ours.append(ours_and_theirs[0])
                theirs += ours_and_theirs[1:]
        self.fusion_levels_ = None
        with ThreadPoolExecutor(1) as pool:
            # the coreset is memory-bound and the partner's is independent of ours: both are chosen at once
            # (4 references, one torch thread each: fit 1.5 -> 0.8-1.0 s with the shared pass, README
            # "`anomalens detect` end to end", benchmarks/detect_startup.py)
            inference = torch.is_inference_mode_enabled()  # thread-local: the pool's thread takes the caller's

            def choose_bank():
                with torch.inference_mode(inference):
                    return self.bank_with_origin([e.patches for e in ours])

            ours_bank = pool.submit(choose_bank) if kept else None
            if self.partner is not None and (kept or self.settings.zero_shot_fused):
                self._read_partner_blocks()
                self.partner._fit(kept, theirs if both and kept else None)
            if ours_bank is not None:
                bank, origin = ours_bank.result()
                self.bank_.banks["patches"] = bank
                # which references (the objects themselves) the bank came from, each patch's reference and, for
                # a few, their features: leave-one-out on the same references (the fused levels below, a
                # threshold's calibration after fit) reuses them instead of another coreset and backbone pass
                reused = [(e.features, e.layout) for e in ours] if len(kept) <= REUSED_REFERENCES else None
                self._bank_source = (kept, origin, reused)
        if self.partner is not None and kept:
            self.fusion_levels_ = (
                fusion.map_level(fusion.normal_maps(self, kept)),
                fusion.map_level(fusion.normal_maps(self.partner, kept)),
            )

    def use_image_size(self, side: int) -> None:
        """Run at model side `side` (the settings a saved model keeps say so); the backbone reads any size."""
        self.settings = replace(self.requested_settings, image_size=side)
        self.backbone.image_size = side

    def use_rank_for(self, references: int) -> None:
        """Score against the bank with the rank `few_shot_k` resolves to for this many references (kept in
        the settings, so a saved model holds it); zero-shot leaves it as asked."""
        if references:
            self.settings = replace(self.settings, few_shot_k=few_shot_rank(self.requested_settings, references))

    def describe_fit(self) -> str | None:
        side, requested = self.settings.image_size, self.requested_settings
        if self._fuses_zero_shot():
            recipe = fused_partner_recipe(self.settings)
            return f"model input: {side} px; zero-shot with the {recipe} recipe's map fused in (zero_shot_fused)"
        if side == requested.image_size:
            return f"model input: {side} px"
        return (
            f"model input: {side} px, not {requested.image_size}: the references are large enough "
            f"(up to {side_up_to(requested)}: image_size_up_to; 0 keeps image_size)"
        )

    def _scoring_bank(self) -> torch.Tensor | None:
        """The bank where the features are scored (they come back on the CPU: see _encode); None zero-shot."""
        bank = self.bank_.banks.get("patches")
        return bank.cpu() if bank is not None else None

    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        if self._fits_partner() or self._fuses_zero_shot():
            return fusion.fused_predict(self, images)
        bank = self._scoring_bank()
        feats, layouts = self._features(images)
        return [self.score(f, layout, bank) for f, layout in zip(feats, layouts)]

    def _read_partner_blocks(self) -> None:
        if self._shared_pass and not self.partner.backbone._read <= self.backbone._read:
            self.backbone.also_read(self.partner.backbone._read)

    def _fuses_zero_shot(self) -> bool:
        """Whether zero-shot outputs are fused (`zero_shot_fused`): a partner and no bank."""
        return self.partner is not None and self.settings.zero_shot_fused and self._scoring_bank() is None

    def _fits_partner(self) -> bool:
        """Whether outputs are fused: a `fused_recipe` partner, fitted (with references) with its levels."""
        return self.fusion_levels_ is not None and self.partner is not None and self._scoring_bank() is not None

    def score(
        self, feats: torch.Tensor, layout: Layout, bank: torch.Tensor | None, patches: torch.Tensor | None = None
    ) -> MethodOutput:
        """One image's tile features -> its score and its map at the image's size."""
        return self.finish(*self.input_maps(feats, layout, bank, patches), layout)

    def input_maps(
        self, feats: torch.Tensor, layout: Layout, bank: torch.Tensor | None, patches: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, float]:
        """One image's tile features -> (T, S, S) maps on its model inputs and its score (`score_image`)."""
        maps, score = score_image(
            feats, bank, self.settings, layout.input_boxes, patches, self.coarse_layout, layout.input_regions
        )
        return maps, float(score)

    def finish(self, maps: torch.Tensor, score: float, layout: Layout) -> MethodOutput:
        """Maps on the model inputs and the score -> the image's output: each tile's map on its place."""
        tile_maps = [m[top : top + h, left : left + w] for m, (top, left, h, w) in zip(maps, layout.input_boxes)]
        anomaly_map = assemble(tile_maps, layout.tiles, layout.size_hw, self.settings.tile_blend)
        if layout.inspected is None:
            return MethodOutput(score, anomaly_map)
        return MethodOutput(score, apply_to_map(anomaly_map, layout.inspected), inspected=layout.inspected)

    def image_features(self, img: LoadedImage) -> tuple[torch.Tensor, Layout]:
        """One image's (T, h, w, C) tile features and layout: what `score` reads, and flattened, what a
        reference without augmentation adds to the bank."""
        feats, layouts = self._features([img])
        return feats[0], layouts[0]

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Each held-out reference against the bank without its own patches (`leave_one_out_maps`); with
        `fused_recipe`, the partner's the same way and the two fused with levels of the other references'
        maps (`recipe_fusion.held_out_fusion`)."""
        # (a refit inside, for references other than the fitted ones, fits the partner and its levels too)
        ours = self.leave_one_out_maps(references, held_out)
        if not self._fits_partner():
            return [self.finish(*held) for held in ours]
        return fusion.held_out_fusion(self, references, held_out, ours)

    def _unfused_leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """`_leave_one_out` of this recipe alone (no partner)."""
        return [self.finish(*held) for held in self.leave_one_out_maps(references, held_out)]

    def leave_one_out_maps(
        self, references: list[LoadedImage], held_out: list[int]
    ) -> list[tuple[torch.Tensor, float, Layout]]:
        """Each held-out reference's (maps on its inputs, score, layout) against the bank without its own
        patches (`patchknn_references.held_out_maps`: features and bank once, a few kept)."""
        return reference_bank.held_out_maps(self, references, held_out)

    def __getstate__(self) -> dict:
        # a copy (pickled for another process) does not carry the reference images along
        return {**self.__dict__, "_bank_source": None, "_held_out_maps": (None, {})}

    def fit_features(self, per_reference: list[torch.Tensor] | torch.Tensor) -> None:
        """Fit from precomputed bank patches: a list of (P, C) (or (..., C)) tensors, one per reference
        (`reference_patches(img, reference_augmentation(settings, len(references)))` of each)."""
        if isinstance(per_reference, torch.Tensor):
            per_reference = list(per_reference)
        self.num_references = len(per_reference)
        self.use_rank_for(len(per_reference))
        self.bank_ = MemoryBank()
        self._bank_source = None
        self._held_out_maps = (None, {})
        self.bank_.banks["patches"] = self.build_bank([p.reshape(-1, p.shape[-1]) for p in per_reference])

    def state_dict(self) -> dict[str, torch.Tensor]:
        state = self.bank_.state_dict()
        if "patches" in self.bank_ and self.settings.few_shot_k is not None:  # the rank fit resolved
            state[RANK_KEY] = torch.tensor(self.settings.few_shot_k)
        if self.partner is not None and self.fusion_levels_ is not None:
            state.update(fusion.partner_state(self.partner.state_dict(), self.fusion_levels_))
        return state

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self._bank_source = None
        self._held_out_maps = (None, {})
        own, partner, levels = fusion.split_state(state)
        rank = own.pop(RANK_KEY, None)
        if rank is not None and self.settings.few_shot_k is None:  # a rank given in the settings wins
            self.settings = replace(self.settings, few_shot_k=int(rank))
        self.bank_.load_state_dict(own)
        self.fusion_levels_ = levels if self.partner is not None else None
        if self._fits_partner() or self._fuses_zero_shot():
            self._read_partner_blocks()
            self.partner.use_image_size(self.settings.image_size)  # fitted on the same references (or none)
            if self.fusion_levels_ is not None:  # zero-shot the partner has no bank to load
                self.partner.load_state_dict(partner)
        if "patches" in self.bank_:
            self.num_references = max(self.num_references, 1)
