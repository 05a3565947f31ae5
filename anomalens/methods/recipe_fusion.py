"""Two patchknn recipes on the same references, each map in units of its own normal spread.

patchknn's default (unit directions and log lengths) wins on parts whose lighting varies; the texture
recipe (per-image layer-normalised magnitudes, blocks 4, 10, 14) wins on textured surfaces and loses
on those parts (README "Which setting for which surface"). With `fused_recipe`, both score every
image. Each map is first standardised by the level it reaches on the references themselves (their
leave-one-out maps: the median and the MAD of their pixels; one reference: it against its own
mirrored and turned copies), so a distance counts by how unusual it is for *that* recipe on *these*
references. The image's map is the pixelwise maximum of the two standardised maps and its score the
larger of the two standardised scores: a recipe whose distances are noisy on these references (the
texture recipe on a reflective part: its normal spread is wide) rarely exceeds the other, and one
that separates a defect better (the texture recipe on a finish change) does. README "Both recipes at
once" has the measurements.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch

from ..augment import augment_input
from ..backbones.cnn import EfficientNetPatchBackbone
from ..inspection_region import apply_to_map
from .base import MethodOutput
from .patchknn_settings import KNN_RECIPES, PatchKnnSettings, fused_partner_recipe, recipe_coreset_size

# Every 4th pixel of each reference map along both axes: ~4,000 pixels of a 256 px map, more than
# enough for a median and a MAD, and the references' maps are not kept.
LEVEL_PIXEL_STEP = 4
# where a saved model keeps the `fused_recipe` partner's bank and the two maps' levels
PARTNER_PREFIX = "partner."
FUSION_LEVELS_KEY = "fusion.levels"
# A MAD below this (a map that is constant on the references) is taken as this: no division by zero.
MIN_SPREAD = 1e-6


@dataclass(frozen=True)
class MapLevel:
    """Where one recipe's maps lie on normal images: their median and median absolute deviation."""

    median: float
    spread: float

    def standardise(self, values: np.ndarray | torch.Tensor | float) -> np.ndarray | torch.Tensor | float:
        return (values - self.median) / self.spread


def map_level(outputs: list[MethodOutput]) -> MapLevel:
    """The median and MAD of the pixels (every LEVEL_PIXEL_STEP-th, those that count) of normal maps."""
    if not outputs:
        raise ValueError("map_level needs at least one map of a normal image")
    return level_of_samples([level_sample(out) for out in outputs])


def level_sample(out: MethodOutput) -> np.ndarray:
    """The pixels of one normal map that its level is taken from (every LEVEL_PIXEL_STEP-th, those that
    count): what `map_level` reads, for callers that do not keep the maps."""
    step = (slice(None, None, LEVEL_PIXEL_STEP),) * 2
    values = out.anomaly_map[step]
    return values[out.inspected[step]] if out.inspected is not None else values.ravel()


def level_of_samples(samples: list[np.ndarray]) -> MapLevel:
    """The median and MAD of `level_sample`s of normal maps."""
    sample = np.concatenate(samples).astype(np.float64)
    median = float(np.median(sample))
    spread = float(np.median(np.abs(sample - median)))
    return MapLevel(median, max(spread, MIN_SPREAD))


def fuse_inputs(
    first: tuple[torch.Tensor, float], second: tuple[torch.Tensor, float], levels: tuple[MapLevel, MapLevel]
) -> tuple[torch.Tensor, float]:
    """One image's two (maps on its model inputs, score) -> the pixelwise maximum of the standardised maps and
    the larger standardised score. On the model inputs, before the tiles are put back on the image: the
    ONNX graph fuses there too (`anomalens.export.patchknn`), so both give the same map."""
    (a_maps, a_score), (b_maps, b_score) = first, second
    a, b = levels
    maps = torch.maximum(a.standardise(a_maps), b.standardise(b_maps))
    return maps, max(float(a.standardise(a_score)), float(b.standardise(b_score)))


def image_levels(maps: torch.Tensor, pooled: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-shot levels: the median and the MAD of the pixels (every LEVEL_PIXEL_STEP-th along both axes) of
    (B, S, S) maps on model inputs, of all B together (one image's tiles) or of each input, as (1 or B, 1, 1)
    tensors. Lower medians, by sorting: the ONNX graph computes them with the same code. The spread is at
    least MIN_SPREAD. (All pixels would cost a quarter of a zero-shot image's time in sorting; the maps are
    smooth at that step.)"""
    sampled = maps[:, ::LEVEL_PIXEL_STEP, ::LEVEL_PIXEL_STEP]
    flat = sampled.reshape(1, -1) if pooled else sampled.flatten(1)
    # the middle index from the shape as a tensor: an exported graph reads it at run time (its batch varies)
    middle = torch.div(torch._shape_as_tensor(flat)[1] - 1, 2, rounding_mode="floor").reshape(1)
    median = flat.sort(dim=1).values.index_select(1, middle)
    spread = (flat - median).abs().sort(dim=1).values.index_select(1, middle).clamp_min(MIN_SPREAD)
    return median.reshape(-1, 1, 1), spread.reshape(-1, 1, 1)


def fuse_zero_shot(first: torch.Tensor, second: torch.Tensor, pooled: bool = True) -> torch.Tensor:
    """One image's two (T, S, S) zero-shot maps -> the first's map, raised where the second, standardised by
    its own image levels and expressed in the first's (x * spread + median), is larger. The first's values
    are kept, so its level still tells one image from another."""
    (ours, our_spread), (theirs, their_spread) = image_levels(first, pooled), image_levels(second, pooled)
    return torch.maximum(first, (second - theirs) / their_spread * our_spread + ours)


def fuse(first: MethodOutput, second: MethodOutput, levels: tuple[MapLevel, MapLevel]) -> MethodOutput:
    """`fuse_inputs` for two outputs at the image's size (musc's fused share fuses there, as it was
    measured), the first's inspection region kept (pixels outside it at the map's lowest value)."""
    maps, score = fuse_inputs(
        (torch.from_numpy(first.anomaly_map), first.score), (torch.from_numpy(second.anomaly_map), second.score), levels
    )
    fused = maps.numpy().astype(np.float32)
    if first.inspected is not None:
        fused = apply_to_map(fused, first.inspected)
    return MethodOutput(score, fused, inspected=first.inspected)


def fused_predict(method, images: list) -> list[MethodOutput]:
    """A fitted patchknn's outputs with its `fused_recipe` partner: both score each image's inputs, fused there
    (zero-shot by `fuse_zero_shot`)."""
    partner = method.partner
    if method._shared_pass and partner.settings.image_size == method.settings.image_size:
        inputs, layouts = zip(*(method.model_inputs(img) for img in images)) if images else ((), ())
        counts = [len(per_image) for per_image in inputs]
        ours, theirs = encode_both(method, [x for per_image in inputs for x in per_image])
        ours, theirs = torch.split(ours, counts), torch.split(theirs, counts)
    else:
        (ours, layouts), (theirs, _) = method._features(images), partner._features(images)
    bank, partner_bank = method._scoring_bank(), partner._scoring_bank()
    outputs = []
    for a, b, layout in zip(ours, theirs, layouts):
        first, second = method.input_maps(a, layout, bank), partner.input_maps(b, layout, partner_bank)
        if method.fusion_levels_ is None:  # zero-shot (`zero_shot_fused`): the image's own levels, our score
            outputs.append(method.finish(fuse_zero_shot(first[0], second[0]), first[1], layout))
        else:
            outputs.append(method.finish(*fuse_inputs(first, second, method.fusion_levels_), layout))
    return outputs


def held_out_fusion(method, references: list, held_out: list[int], ours: list) -> list[MethodOutput]:
    """The fused leave-one-out outputs of the `held_out` references (`ours`: the method's own
    `leave_one_out_maps`). Each is standardised by levels of the *other* references' leave-one-out maps:
    levels that include its own map would pull the median towards it and score it lower than a new normal
    image (with 4 references a quarter of the pixels are its own), so thresholds calibrated on these
    scores would reject good images. A refit without it would also leave its patches out of the others'
    banks; that small difference remains (the others' maps are a little lower, its score a little higher)."""
    rest = [j for j in range(len(references)) if j not in set(held_out)]  # maps the levels need too
    wanted = [*held_out, *rest]
    # each map once per recipe (a plain list for the partner and the rest: progress is reported once)
    maps = [
        dict(zip(wanted, [*ours, *(method.leave_one_out_maps(references[:], rest) if rest else [])])),
        dict(zip(wanted, method.partner.leave_one_out_maps(references[:], wanted))),
    ]
    recipes = (method, method.partner)
    images = [{j: recipe.finish(*held) for j, held in each.items()} for recipe, each in zip(recipes, maps)]
    outputs = []
    for i in held_out:
        others = [j for j in sorted(images[0]) if j != i]  # (none: a lone reference keeps the fitted levels)
        levels = tuple(map_level([each[j] for j in others]) for each in images) if others else method.fusion_levels_
        a, b = maps[0][i], maps[1][i]
        outputs.append(method.finish(*fuse_inputs(a[:2], b[:2], levels), a[2]))
    return outputs


def encode_both(method, inputs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The method's `_encode` features and its partner's, from one backbone pass per batch."""
    b = method.encode_batch()
    ours, theirs = [], []
    for i in range(0, len(inputs), b):
        feats, blocks = method.backbone.forward_with_blocks(torch.stack(inputs[i : i + b]).to(method.device))
        ours.append(feats)
        theirs.append(method.partner.backbone.features_from_blocks(blocks))
    return torch.cat(ours).cpu(), torch.cat(theirs).cpu()


def output_scale(method) -> float:
    """How much a fitted patchknn's outputs magnify its distances: 1, or with a fused recipe 1 / the smaller
    spread (float differences of the distances, e.g. ONNX against PyTorch, grow by as much)."""
    levels = getattr(method, "fusion_levels_", None) if method._fits_partner() else None
    return 1.0 if levels is None else 1.0 / min(level.spread for level in levels)


def levels_tensor(levels: tuple[MapLevel, MapLevel]) -> torch.Tensor:
    """The two levels as the (4,) tensor a saved model keeps: median, spread, median, spread."""
    return torch.tensor([levels[0].median, levels[0].spread, levels[1].median, levels[1].spread], dtype=torch.float64)


def levels_from_tensor(values: torch.Tensor) -> tuple[MapLevel, MapLevel]:
    v = [float(x) for x in values.flatten().tolist()]
    if len(v) != 4 or v[1] <= 0 or v[3] <= 0:
        raise ValueError(f"fusion levels must be 4 numbers with positive spreads, got {v}")
    return MapLevel(v[0], v[1]), MapLevel(v[2], v[3])


def partner_state(partner: dict[str, torch.Tensor], levels: tuple[MapLevel, MapLevel]) -> dict[str, torch.Tensor]:
    """What a saved model keeps of the fusion beside its own bank: the partner's tensors and the two levels."""
    return {**{f"{PARTNER_PREFIX}{k}": v for k, v in partner.items()}, FUSION_LEVELS_KEY: levels_tensor(levels)}


def split_state(state: dict[str, torch.Tensor]) -> tuple[dict, dict, tuple[MapLevel, MapLevel] | None]:
    """A saved model's tensors -> (its own, the partner's, the levels or None when it was not fused)."""
    own = {k: v for k, v in state.items() if not k.startswith(PARTNER_PREFIX) and k != FUSION_LEVELS_KEY}
    partner = {k[len(PARTNER_PREFIX) :]: v for k, v in state.items() if k.startswith(PARTNER_PREFIX)}
    levels = levels_from_tensor(state[FUSION_LEVELS_KEY]) if FUSION_LEVELS_KEY in state else None
    return own, partner, levels


def partner_settings(settings: PatchKnnSettings) -> PatchKnnSettings:
    """The settings of `fused_recipe`'s second patchknn: these with the recipe's changes, not fused itself. A
    recipe with magnitudes leaves the length channels and the bank's Gaussian at their defaults for it (off):
    they are defined for unit features. Its zero-shot score is never read (the fused image keeps ours), so it
    is not computed apart from its map (`zero_shot_score` "map")."""
    recipe = KNN_RECIPES[fused_partner_recipe(settings)]
    unit_only = {"length_weight": None, "length_blocks": None, "gaussian_weight": None}
    changes = {
        **(unit_only if recipe.get("magnitudes") else {}),
        **recipe,
        "fused_recipe": "none",
        "zero_shot_score": "map",
        "coreset_size": recipe_coreset_size(settings),  # its share of the kNN's work (`fused_coreset_share`)
    }
    return replace(settings, **changes)


def shares_pass(ours: torch.nn.Module, theirs: torch.nn.Module) -> bool:
    """Whether `theirs`'s features can be made from `ours`'s pass: the same EfficientNet-Lite network."""
    same_kind = isinstance(ours, EfficientNetPatchBackbone) and isinstance(theirs, EfficientNetPatchBackbone)
    return same_kind and ours.name == theirs.name


def normal_maps(method, references: list) -> list[MethodOutput]:
    """A fitted patchknn's maps of normal images for `map_level`: each reference left out of the bank, or a
    single reference against its own mirrored and turned copies (not against itself)."""
    if len(references) > 1:
        return method._unfused_leave_one_out(references, list(range(len(references))))
    inputs, layout = method.model_inputs(references[0])
    copies = method._encode([y for x in inputs for y in augment_input(x, "flips")[1:]])
    feats, _ = method._features(references)
    return [method.score(feats[0], layout, method.build_bank([copies.reshape(-1, copies.shape[-1])]))]
