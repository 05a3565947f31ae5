"""The `musc` method: LNAMD features, mutual scoring over the batch, RsCIN re-scoring."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable, Iterator
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

from ...errors import SettingsError, UsageError
from ...geometry import map_to_image
from ...images import LoadedImage
from ...inspection_region import apply_to_map
from ...tiling import assemble
from ..base import Method, MethodOutput, register_method
from ..patchknn import PatchKnn, PatchKnnSettings
from .batch_features import BatchFeatures
from .extract import create_layer_backbone, extract_batch_features
from .fused_share import in_first_units, load_reference_knn, reference_knn_state
from .lnamd import weigh_length
from .msm import choose_partners, interval_bounds, mutual_scores, scale_scores, self_distances
from .postprocess import image_scores, smooth_maps, subtract_baseline
from .progress import progress_bar
from .pseudo_references import (
    HeldImages,
    PseudoReferenceKnn,
    lowest_scored,
    musc_references_knn_settings,
    picked_again,
    pseudo_reference_count,
    pseudo_reference_settings,
)
from .rscin import rescore
from .settings import MuScSettings, resolved_knn_fused
from .single_image_share import SingleImageShare, level_images


class SingleImageBatchError(UsageError):
    """Mutual scoring got one image and no references, and the fallback is off."""


@register_method
class MuSc(Method):
    """MuSc (Li, Huang, Xue, Zhou, ICLR 2024): zero-shot by mutual scoring of unlabeled images.

    All images given to one `predict` call form the batch (`scores_jointly`): each is scored
    against the others (and against the fitted reference images, which join every image's
    partners as known-normal images). `fit` keeps the references' LNAMD features; that is all a
    saved `musc` model holds. See `anomalens/methods/musc/__init__.py` for paper-vs-code choices.
    """

    name = "musc"
    Settings = MuScSettings
    scores_jointly = True
    # with an inspection region the image score reads the counted cells (before RsCIN) and patchknn's
    # parts (references, pseudo-references) get the region too
    supports_region = True

    def __init__(self, settings: MuScSettings):
        super().__init__(settings)
        s = settings
        try:
            interval_bounds(10, tuple(s.interval))
            if len(s.interval) != 2 or any(r % 2 == 0 for r in s.degrees):
                raise ValueError("interval must be two fractions (from, to) and degrees odd numbers")
        except ValueError as err:
            raise SettingsError(f"musc: {err}, got interval={s.interval}, degrees={s.degrees}") from None
        self.backbone = create_layer_backbone(
            s.backbone, s.weights, s.image_size, tuple(s.blocks), tuple(s.clip_layers), s.score_stride, s.released_clip
        )
        self.references: BatchFeatures | None = None
        # with references and reference_knn_weight > 0: patchknn fitted on them (`reference_knn`)
        self.reference_knn_: PatchKnn | None = None
        self.last_batch: dict = {}
        self.last_ranking: dict[str, list[float] | None] = {}  # mutual scores; what picked the pseudo-refs

    def to(self, device: str | torch.device) -> MuSc:
        super().to(device)
        if self.reference_knn_ is not None:  # a method of its own: Method.to leaves it where it is
            self.reference_knn_.to(device)
        return self

    def describe_fit(self) -> str | None:
        s = self.settings
        pseudo = f"the {s.pseudo_reference_share:.0%} of the batch the mutual score ranks lowest"
        if s.pseudo_reference_rounds > 1:
            pseudo += f", picked again by the joined score (pseudo_reference_rounds {s.pseudo_reference_rounds})"
        second = self.knn_fused()
        fused = f" (fused with its {second} recipe: knn_fused)" if second not in ("none", s.knn_recipe) else ""
        if self.references is None:  # zero-shot: the batch's shares, if any
            parts = []
            if s.pseudo_reference_share > 0:
                parts.append(f"{pseudo} become patchknn's references{fused} (pseudo_reference_share), ")
                parts[-1] += f"weight {s.pseudo_reference_weight:g} (pseudo_reference_weight)"
            if s.single_image_knn_weight > 0:
                parts.append("patchknn scores each image against its own patches, ")
                parts[-1] += f"weight {s.single_image_knn_weight:g} (single_image_knn_weight)"
            return "; ".join(parts) or None
        if self.reference_knn_ is None:
            return None
        joined = f", joined by {pseudo} (pseudo_reference_share)" if s.pseudo_reference_share > 0 else ""
        knn = self.reference_knn_.describe_fit()
        return (
            f"references also scored by patchknn{fused} (weight {s.reference_knn_weight:g}: reference_knn_weight)"
            f"{joined}; its {knn}"
        )

    def knn_fused(self, with_references: bool | None = None) -> str:
        """The recipe the share fuses beside its own (`knn_fused`, resolved for references given or fitted)."""
        fitted = self.references is not None
        return resolved_knn_fused(self.settings, fitted if with_references is None else with_references)

    def reference_knn_settings(self, with_references: bool) -> PatchKnnSettings:
        """The settings of the patchknn fitted on real references (`musc_references_knn_settings`)."""
        s = self.settings
        return musc_references_knn_settings(s.knn_recipe, self.knn_fused(with_references), s.reference_augment)

    def reference_knn(self, references: list[LoadedImage]) -> PatchKnn | None:
        """patchknn for these references, not yet fitted (None without them or with reference_knn_weight 0)."""
        if not references or self.settings.reference_knn_weight <= 0:
            return None
        knn = PatchKnn(self.reference_knn_settings(True)).to(self.device)
        knn.region = self.region  # (patchknn passes it on to its partner: both count the same pixels)
        return knn

    # ---- features ------------------------------------------------------------------------
    def features(self, images: Iterable[LoadedImage], desc: str = "musc features", also: Callable | None = None):
        """LNAMD features (BatchFeatures) of images read one batch at a time (the pixels are not kept; `also`
        is called with each batch of images, a list of LoadedImage, while they are in memory)."""
        total = len(images) if hasattr(images, "__len__") else None
        bar = progress_bar(total, desc, self.settings.progress)
        feats = extract_batch_features(self.backbone, self.settings, images, bar, also)
        bar.close()
        return feats

    # ---- fit / predict -------------------------------------------------------------------
    def _fit(self, references: list[LoadedImage]) -> None:
        self.num_references = len(references)
        self.references = self.features(references, "musc references") if references else None
        self.reference_knn_ = self.reference_knn(references)
        if self.reference_knn_ is not None:  # indexed: a ReportingList reports only musc's own pass
            self.reference_knn_.fit([references[i] for i in range(len(references))])

    def _predict(self, images: Iterable[LoadedImage]) -> list[MethodOutput]:
        """Score the batch jointly; `images` may be a stream (each is read once)."""
        return list(self.predict_joint(images))

    def predict_joint(self, images: Iterable[LoadedImage]) -> Iterator[MethodOutput]:
        s = self.settings
        # patchknn scores the batch once it is ranked (its pseudo-references are the images the
        # mutual score ranks lowest), so the images are held (reduced) until then
        zero_shot = self.references is None
        batch_shares = s.pseudo_reference_share > 0 or s.single_image_knn_weight > 0
        wanted = self.reference_knn_ is not None or (zero_shot and batch_shares)
        held = HeldImages(pseudo_reference_settings(s.knn_recipe, self.knn_fused())) if wanted else None
        feats = self.features(images, also=held.add if held is not None else None)
        if not feats.paths:
            return iter(())
        maps, scores = self.score_features(feats, feats.paths, self.references)
        knn = self.batch_knn(held, scores, feats.paths) if held is not None else None
        single = None
        if zero_shot and s.single_image_knn_weight > 0:
            single = SingleImageShare(held, self.device, self.region)
        self.last_ranking = {"mutual": [float(x) for x in scores], "picked_by": getattr(knn, "ranked_by", None)}
        self.last_batch = {
            "images": list(feats.paths),
            "references": self.num_references,
            "max_partners": s.max_partners,
            "partner_seed": s.partner_seed,
            "pseudo_references": [] if knn is None else [feats.paths[i] for i in knn.chosen],
        }
        if single is not None:
            return self._joined_outputs(feats, maps, scores, knn, single)
        return self._outputs(feats, maps, scores, knn)

    def batch_knn(self, held: HeldImages, scores: torch.Tensor, paths: list[str]) -> PseudoReferenceKnn | None:
        """patchknn for this batch: on the fitted references and the batch's lowest-scored images
        (pseudo-references); None when there are neither."""
        s = self.settings
        count = pseudo_reference_count(s.pseudo_reference_share, s.pseudo_reference_minimum, len(paths))
        chosen = lowest_scored(scores, paths, count) if count else []
        if not chosen and self.reference_knn_ is None:
            return None
        fitted = partial(
            PseudoReferenceKnn,
            held,
            device=self.device,
            settings=held.settings,
            references=self.reference_knn_,
            region=self.region,
        )
        w, rounds = self.knn_weight(), s.pseudo_reference_rounds
        return picked_again(fitted(chosen), fitted, scores, paths, w, rounds, s.progress)

    def knn_weight(self) -> float:
        """patchknn's share of each output: `reference_knn_weight` with references, else `pseudo_reference_weight`."""
        s = self.settings
        return s.reference_knn_weight if self.reference_knn_ is not None else s.pseudo_reference_weight

    def _outputs(
        self, feats: BatchFeatures, maps: torch.Tensor, scores: torch.Tensor, knn: PseudoReferenceKnn | None
    ) -> Iterator[MethodOutput]:
        """The batch's outputs one by one (a generator: the full-size maps are made as they are consumed)."""
        inputs = feats.inputs_of()  # once: each image's maps are found by it
        bar = progress_bar(len(feats.paths), "patchknn", self.settings.progress and knn is not None)
        for i in range(len(feats.paths)):
            yield self._image_outputs(feats, i, maps, scores, inputs, knn)[0]
            bar.update(1)
        bar.close()

    def _image_outputs(self, feats, i, maps, scores, inputs, knn, with_share: bool = False) -> list[MethodOutput]:
        """Image i's output (its mutual score, with patchknn's (pseudo-)reference share when there is one)
        and, `with_share`, that share alone."""
        mutual = self._output(feats, i, maps, float(scores[i]), inputs[i])
        if knn is None:
            return [mutual]
        share = knn.output(i)
        combined = self.with_reference_knn(mutual, share, self.knn_weight())
        return [combined, share] if with_share else [combined]

    def _joined_outputs(
        self,
        feats: BatchFeatures,
        maps: torch.Tensor,
        scores: torch.Tensor,
        knn: PseudoReferenceKnn | None,
        single: SingleImageShare,
    ) -> Iterator[MethodOutput]:
        """Zero-shot with `single_image_knn_weight`: each output joined by patchknn's single-image output
        (`single_image_share`), levelled on the batch's most normal images before the first is given."""
        inputs = feats.inputs_of()
        s = self.settings
        gate = s.single_image_gate != "none" and knn is not None and bool(knn.chosen)
        indices = level_images(scores, feats.paths, [] if knn is None else knn.chosen)
        bar = progress_bar(len(feats.paths), "patchknn single-image", s.progress)
        for out in single.joined_outputs(
            lambda i: self._image_outputs(feats, i, maps, scores, inputs, knn, gate),
            indices,
            gate,
            s.single_image_knn_weight,
        ):
            yield out
            bar.update(1)
        bar.close()

    def with_reference_knn(self, mutual: MethodOutput, knn: MethodOutput, weight: float | None = None) -> MethodOutput:
        """The mutual output averaged with patchknn's (`weight`, by default `reference_knn_weight`)."""
        w = self.settings.reference_knn_weight if weight is None else weight
        anomaly_map = ((1.0 - w) * mutual.anomaly_map + w * knn.anomaly_map).astype(np.float32)
        if mutual.inspected is not None:
            anomaly_map = apply_to_map(anomaly_map, mutual.inspected)
        return MethodOutput((1.0 - w) * mutual.score + w * knn.score, anomaly_map, inspected=mutual.inspected)

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Each held-out reference scored against all the other references; ends fitted on all."""
        feats = self.features(references, "musc references")
        outputs = []
        for i in held_out:
            others = feats.select([j for j in range(len(references)) if j != i])
            one = feats.select([i])
            maps, scores = self.score_features(one, one.paths, others)
            outputs.append(self._output(one, 0, maps, float(scores[0]), one.inputs_of()[0]))
        self.references, self.num_references = feats, len(references)
        self.reference_knn_ = self.reference_knn(references)
        if self.reference_knn_ is not None:  # patchknn's own leave-one-out, merged as in predict
            plain = [references[i] for i in range(len(references))]
            # with knn_fused, patchknn fuses its two recipes: in the first's units, as in predict
            knn_outputs = in_first_units(self.reference_knn_, self.reference_knn_.leave_one_out(plain, held_out))
            outputs = [self.with_reference_knn(m, k) for m, k in zip(outputs, knn_outputs)]
        return outputs

    def score_features(
        self, feats: BatchFeatures, keys: list[str], known_normal: BatchFeatures | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(T, h, w) patch maps of the inputs (tiles) on the finest grid and (N,) image scores of one batch."""
        s = self.settings
        n = len(keys)
        num_known = 0 if known_normal is None else known_normal.num_images
        if n == 1 and num_known == 0:
            if s.single_image == "error":
                raise SingleImageBatchError(
                    f"{keys[0]}: musc scores images against each other and got a batch of one image "
                    "with no reference images; give more images or --refs"
                )
            warnings.warn(
                f"musc: {keys[0]} is a batch of one image with no reference images; scored by "
                "single-image zero-shot (each patch against the image's own other patches)",
                stacklevel=2,
            )
        image_partners = choose_partners(keys, s.max_partners, s.partner_seed) if n > 1 else [[]]
        partners, groups, known_groups = feats.tile_partners(image_partners, known_normal)
        rows = len(feats.owners())
        grid = max(feats.grids, key=lambda g: g[0] * g[1])
        total = torch.zeros(rows, *grid)
        bar = progress_bar(rows * len(feats.patches), "musc mutual scoring", s.progress)
        for (layer, _degree), z in feats.patches.items():
            known = None if known_normal is None else known_normal.patches[(layer, _degree)]
            norm = s.patch_norm
            if s.intensity_weight > 0 and layer == len(feats.grids) - 1:  # the intensity layer
                norm = "none"
                z = z.float() * s.intensity_weight
                known = None if known is None else known.float() * s.intensity_weight
            elif norm == "l2_length":
                z = weigh_length(z, s.length_weight)
                known = None if known is None else weigh_length(known, s.length_weight)
            if n == 1 and num_known == 0:
                patch_scores = torch.stack([self_distances(z[t], s.chunk_elements, norm) for t in range(rows)])
                bar.update(rows)
            else:
                patch_scores = mutual_scores(
                    z,
                    partners,
                    known,
                    tuple(s.interval),
                    s.chunk_elements,
                    on_image=lambda: bar.update(1),
                    patch_norm=norm,
                    groups=groups,
                    known_groups=known_groups,
                )
                if s.self_weight > 0:
                    own = torch.stack([self_distances(z[t], s.chunk_elements, norm) for t in range(rows)])
                    patch_scores = (1.0 - s.self_weight) * patch_scores + s.self_weight * own
            patch_scores = scale_scores(patch_scores, s.score_scale)
            h, w = feats.grids[layer]
            layer_map = patch_scores.view(rows, 1, h, w)
            if (h, w) != grid:
                layer_map = F.interpolate(layer_map, size=grid, mode="bilinear", align_corners=False)
            total += layer_map[:, 0]
        bar.close()
        return self.finish(total / len(feats.patches), feats)

    def finish(self, maps: torch.Tensor, feats: BatchFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Mutual-score maps (T, h, w) of the inputs -> (smoothed maps, (N,) image scores after RsCIN)."""
        s = self.settings
        maps = smooth_maps(maps, s.smoothing_sigma, s.image_size)
        maps = subtract_baseline(maps, feats.boxes, s.image_size, s.map_baseline)
        counted = None
        if self.region is not None:
            counted = feats.counted_cells(self.region, tuple(maps.shape[-2:]), s.image_size, s.region_margin)
        scores = image_scores(
            maps, feats.boxes, s.image_size, s.image_score_top, s.edge_neighbourhood, feats.inputs_of(), counted
        )
        if s.rscin and scores.shape[0] > 1:
            scores = rescore(scores, feats.per_image_features(), s.rscin_neighbours)
        return maps, scores

    def image_map(self, feats: BatchFeatures, i: int, maps: torch.Tensor, inputs: list[int]) -> np.ndarray:
        """Image i's map at its own size from the maps of its `inputs` (`feats.inputs_of()[i]`: its
        tiles, resized onto their boxes)."""
        size = self.settings.image_size
        if len(inputs) == 1:
            return map_to_image(maps[inputs[0]], feats.boxes[inputs[0]], size, feats.sizes[i])
        tiles = feats.tiles[i]
        parts = [
            torch.from_numpy(map_to_image(maps[t], feats.boxes[t], size, tile[2:])) for t, tile in zip(inputs, tiles)
        ]
        return assemble(parts, tiles, feats.sizes[i], self.settings.tile_blend)

    def _output(
        self, feats: BatchFeatures, i: int, maps: torch.Tensor, score: float, inputs: list[int]
    ) -> MethodOutput:
        anomaly_map = self.image_map(feats, i, maps, inputs)
        if self.region is None:
            return MethodOutput(score, anomaly_map)
        s = self.settings
        inspected = feats.counted_pixels(self.region, i, s.image_size, s.region_margin, inputs)[0]
        return MethodOutput(score, apply_to_map(anomaly_map, inspected), inspected=inspected)

    # ---- persistence: the references' features -------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.references is None:
            return {}
        state = reference_knn_state(self.reference_knn_)
        state |= {f"ref.{layer}.{r}": v.contiguous() for (layer, r), v in self.references.patches.items()}
        state["ref.image_features"] = self.references.image_features.contiguous()
        state["ref.grids"] = torch.tensor(self.references.grids, dtype=torch.long)
        state["ref.boxes"] = torch.tensor(self.references.boxes, dtype=torch.long)
        state["ref.owner"] = torch.tensor(self.references.owners(), dtype=torch.long)
        return state

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        knn_settings = self.reference_knn_settings("ref.image_features" in state)
        self.reference_knn_ = load_reference_knn(state, knn_settings, self.device, self.region)
        if "ref.image_features" not in state:
            self.references = None
            return
        patches = {}
        for key, value in state.items():
            parts = key.split(".")
            if len(parts) == 3 and parts[1].isdigit():
                patches[(int(parts[1]), int(parts[2]))] = value
        grids = [tuple(int(v) for v in g) for g in state["ref.grids"].tolist()]
        boxes = [tuple(int(v) for v in b) for b in state["ref.boxes"].tolist()]
        owner = state["ref.owner"].tolist() if "ref.owner" in state else []  # saved before tiles: one row each
        self.references = BatchFeatures(patches, grids, state["ref.image_features"], boxes, owner=owner)
        self.num_references = self.references.num_images
