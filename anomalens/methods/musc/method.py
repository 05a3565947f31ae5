"""The `musc` method: LNAMD features, mutual scoring over the batch, RsCIN re-scoring."""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...errors import SettingsError, UsageError
from ...geometry import map_to_image, to_model_input
from ...images import LoadedImage
from ..base import Method, MethodOutput, register_method
from .extract import create_layer_backbone
from .lnamd import aggregate, intensity_map, lnamd, weigh_length
from .msm import choose_partners, interval_bounds, mutual_scores, scale_scores, self_distances
from .postprocess import image_scores, smooth_maps, standardise_photometry, subtract_baseline
from .rscin import rescore
from .settings import MuScSettings

DTYPES = {"float16": torch.float16, "float32": torch.float32}


class SingleImageBatchError(UsageError):
    """Mutual scoring got one image and no references, and the fallback is off."""


@dataclass
class BatchFeatures:
    """LNAMD features of a batch: {(layer, degree): (N, P_l, C_l)}, grids, image features, boxes."""

    patches: dict[tuple[int, int], torch.Tensor]
    grids: list[tuple[int, int]]
    image_features: torch.Tensor
    boxes: list[tuple[int, int, int, int]]
    paths: list[str] = field(default_factory=list)
    sizes: list[tuple[int, int]] = field(default_factory=list)

    def select(self, index: list[int]) -> BatchFeatures:
        idx = torch.as_tensor(index, dtype=torch.long)
        return BatchFeatures(
            {k: v.index_select(0, idx) for k, v in self.patches.items()},
            self.grids,
            self.image_features.index_select(0, idx),
            [self.boxes[i] for i in index],
            [self.paths[i] for i in index],
            [self.sizes[i] for i in index],
        )


def _bar(total: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="img", leave=False, disable=None if enabled else True)


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
            s.backbone, s.weights, s.image_size, tuple(s.blocks), tuple(s.clip_layers), s.score_stride
        )
        self.references: BatchFeatures | None = None
        self.last_batch: dict = {}

    # ---- features ------------------------------------------------------------------------
    def features(self, images: Iterable[LoadedImage], desc: str = "musc features") -> BatchFeatures:
        """LNAMD features of images read one batch at a time (the pixels are not kept)."""
        s = self.settings
        dtype = DTYPES[s.feature_dtype]
        chunks: dict[tuple[int, int], list[torch.Tensor]] = {}
        grids: list[tuple[int, int]] = []
        globals_, boxes, paths, sizes = [], [], [], []
        total = len(images) if hasattr(images, "__len__") else None
        bar = _bar(total, desc, s.progress)
        for batch in _batched(images, s.batch_size):
            inputs = []
            for img in batch:
                rgb = standardise_photometry(img.rgb, s.photometric)
                x, box = to_model_input(rgb, s.image_size, self.backbone.mean, self.backbone.std, s.resize)
                inputs.append(x)
                boxes.append(box)
                paths.append(img.path)
                sizes.append(img.size_hw)
            maps, image_feats = self.backbone(torch.stack(inputs))
            grids = [tuple(m.shape[-2:]) for m in maps]
            for key, value in lnamd(maps, s.degrees, s.patch_norm).items():
                chunks.setdefault(key, []).append(value.to(dtype))
            if s.intensity_weight > 0:  # one more layer, last: see lnamd.intensity_map
                grid = max(grids, key=lambda g: g[0] * g[1])
                grey = intensity_map(torch.stack(inputs), self.backbone.mean, self.backbone.std, grid)
                for r in s.degrees:
                    chunks.setdefault((len(grids), r), []).append(aggregate(grey, r, "none").to(dtype))
                grids.append(grid)
            globals_.append(image_feats.float())
            bar.update(len(batch))
        bar.close()
        patches = {k: torch.cat(v) for k, v in chunks.items()}
        image_features = torch.cat(globals_) if globals_ else torch.empty(0)
        return BatchFeatures(patches, grids, image_features, boxes, paths, sizes)

    # ---- fit / predict -------------------------------------------------------------------
    def _fit(self, references: list[LoadedImage]) -> None:
        self.num_references = len(references)
        self.references = self.features(references, "musc references") if references else None

    def _predict(self, images: Iterable[LoadedImage]) -> list[MethodOutput]:
        """Score the batch jointly; `images` may be a stream (each is read once)."""
        return list(self.predict_joint(images))

    def predict_joint(self, images: Iterable[LoadedImage]) -> Iterator[MethodOutput]:
        feats = self.features(images)
        if not feats.paths:
            return iter(())
        maps, scores = self.score_features(feats, feats.paths, self.references)
        self.last_batch = {
            "images": list(feats.paths),
            "references": self.num_references,
            "max_partners": self.settings.max_partners,
            "partner_seed": self.settings.partner_seed,
        }
        return (self._output(feats, i, maps[i], float(scores[i])) for i in range(len(feats.paths)))

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Each held-out reference scored against all the other references; ends fitted on all."""
        feats = self.features(references, "musc references")
        outputs = []
        for i in held_out:
            others = feats.select([j for j in range(len(references)) if j != i])
            one = feats.select([i])
            maps, scores = self.score_features(one, one.paths, others)
            outputs.append(self._output(one, 0, maps[0], float(scores[0])))
        self.references, self.num_references = feats, len(references)
        return outputs

    def score_features(
        self, feats: BatchFeatures, keys: list[str], known_normal: BatchFeatures | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(N, h, w) patch maps on the finest grid and (N,) image scores of one batch."""
        s = self.settings
        n = len(keys)
        num_known = 0 if known_normal is None else known_normal.image_features.shape[0]
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
        partners = choose_partners(keys, s.max_partners, s.partner_seed) if n > 1 else [[]]
        grid = max(feats.grids, key=lambda g: g[0] * g[1])
        total = torch.zeros(n, *grid)
        bar = _bar(n * len(feats.patches), "musc mutual scoring", s.progress)
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
                patch_scores = self_distances(z[0], s.chunk_elements, norm)[None]
                bar.update(1)
            else:
                patch_scores = mutual_scores(
                    z,
                    partners,
                    known,
                    tuple(s.interval),
                    s.chunk_elements,
                    on_image=lambda: bar.update(1),
                    patch_norm=norm,
                )
                if s.self_weight > 0:
                    own = torch.stack([self_distances(z[i], s.chunk_elements, norm) for i in range(n)])
                    patch_scores = (1.0 - s.self_weight) * patch_scores + s.self_weight * own
            patch_scores = scale_scores(patch_scores, s.score_scale)
            h, w = feats.grids[layer]
            layer_map = patch_scores.view(n, 1, h, w)
            if (h, w) != grid:
                layer_map = F.interpolate(layer_map, size=grid, mode="bilinear", align_corners=False)
            total += layer_map[:, 0]
        bar.close()
        return self.finish(total / len(feats.patches), feats)

    def finish(self, maps: torch.Tensor, feats: BatchFeatures) -> tuple[torch.Tensor, torch.Tensor]:
        """Mutual-score maps (N, h, w) -> (smoothed maps, image scores after RsCIN)."""
        s = self.settings
        maps = smooth_maps(maps, s.smoothing_sigma, s.image_size)
        maps = subtract_baseline(maps, feats.boxes, s.image_size, s.map_baseline)
        scores = image_scores(maps, feats.boxes, s.image_size, s.image_score_top, s.edge_neighbourhood)
        if s.rscin and maps.shape[0] > 1:
            scores = rescore(scores, feats.image_features, s.rscin_neighbours)
        return maps, scores

    def _output(self, feats: BatchFeatures, i: int, patch_map: torch.Tensor, score: float) -> MethodOutput:
        return MethodOutput(score, map_to_image(patch_map, feats.boxes[i], self.settings.image_size, feats.sizes[i]))

    # ---- persistence: the references' features -------------------------------------------
    def state_dict(self) -> dict[str, torch.Tensor]:
        if self.references is None:
            return {}
        state = {f"ref.{layer}.{r}": v.contiguous() for (layer, r), v in self.references.patches.items()}
        state["ref.image_features"] = self.references.image_features.contiguous()
        state["ref.grids"] = torch.tensor(self.references.grids, dtype=torch.long)
        state["ref.boxes"] = torch.tensor(self.references.boxes, dtype=torch.long)
        return state

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
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
        self.references = BatchFeatures(patches, grids, state["ref.image_features"], boxes)
        self.num_references = state["ref.image_features"].shape[0]


def _batched(images: Iterable[LoadedImage], size: int) -> Iterator[list[LoadedImage]]:
    batch: list[LoadedImage] = []
    for img in images:
        batch.append(img)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
