"""musc's fused share (`knn_fused`): two patchknn recipes as one share, in the first recipe's units.

The share's patchknn (`knn_recipe`, default: patchknn's default) and a second one with `knn_fused`'s
recipe (patchknn's `fused_recipe` partner: `recipe_fusion.partner_settings`) score every image against
the same (pseudo-)references. Each map is standardised by where it lies on normal images
(`recipe_fusion.map_level`: the median and MAD of the pseudo-references' own maps, each without its
own patches; with references and no pseudo-references in the batch, the references' leave-one-out
maps that patchknn keeps as `fusion_levels_`), the pixelwise maximum is taken (the larger score), and
the result is expressed back in the first recipe's units (x * spread + median): musc weighs its share
(`pseudo_reference_weight`, `reference_knn_weight`) in those units, as it was measured. One home for the
arithmetic: `recipe_fusion.fuse`; this module only brings it back to the first level's units. musc fuses
at the image's size, as it was measured; patchknn fuses on its model inputs (so that its ONNX graph can),
so with references and no pseudo-references the two differ by the maps' resizing only.

The fitted reference patchknn is patchknn with `fused_recipe` itself (its partner, its levels and
their saved state are patchknn's); this module also keeps musc's saved "knn." state.
"""

from __future__ import annotations

import numpy as np
import torch

from ..base import MethodOutput
from ..patchknn import PatchKnn, PatchKnnSettings
from ..recipe_fusion import MapLevel, encode_both, fuse, map_level

# where a saved musc model keeps its reference patchknn's tensors and its model side
KNN_PREFIX = "knn."
KNN_SIDE_KEY = "knn.image_size"


def in_units(out: MethodOutput, level: MapLevel) -> MethodOutput:
    """A standardised output back in the units of `level`'s maps (x * spread + median)."""
    anomaly_map = (out.anomaly_map * level.spread + level.median).astype(np.float32)
    return MethodOutput(float(out.score) * level.spread + level.median, anomaly_map, inspected=out.inspected)


def fuse_in_first_units(first: MethodOutput, second: MethodOutput, levels: tuple[MapLevel, MapLevel]) -> MethodOutput:
    """`recipe_fusion.fuse` of one image's two outputs, in the first output's units."""
    return in_units(fuse(first, second, levels), levels[0])


def pair_levels(pairs: list[list[MethodOutput]]) -> tuple[MapLevel, MapLevel]:
    """Each recipe's level on normal images from their (first, second) outputs."""
    return map_level([a for a, _ in pairs]), map_level([b for _, b in pairs])


def recipes_of(knn: PatchKnn) -> list[PatchKnn]:
    """The share's patchknn and, with `knn_fused`, its second recipe."""
    return [knn] if knn.partner is None else [knn, knn.partner]


def encode(knn: PatchKnn, img) -> tuple[list[torch.Tensor], object]:
    """One image's (T, h, w, C) features for each recipe of `knn` (`recipes_of`) and its layout; the two
    recipes' features come from one backbone pass when they read the same network (patchknn's own
    shared pass), else from two."""
    if knn.partner is None:
        feats, layout = knn.image_features(img)
        return [feats], layout
    inputs, layout = knn.model_inputs(img)  # the partner's inputs are the same: same side, resize and tiles
    if knn._shared_pass:
        knn._read_partner_blocks()  # (patchknn reads the partner's blocks from its first fit on)
        return list(encode_both(knn, inputs)), layout
    return [knn._encode(inputs), knn.partner._encode(inputs)], layout


def in_first_units(knn: PatchKnn, outputs: list[MethodOutput]) -> list[MethodOutput]:
    """patchknn's outputs (`leave_one_out`: fused and standardised when it has a fitted partner) in its first
    recipe's units."""
    if knn.partner is None or knn.fusion_levels_ is None:
        return outputs
    return [in_units(out, knn.fusion_levels_[0]) for out in outputs]


def reference_knn_state(knn: PatchKnn | None) -> dict[str, torch.Tensor]:
    """patchknn's bank (with `knn_fused` also its partner's and the levels) and its model side, under "knn."."""
    if knn is None:
        return {}
    state = {f"{KNN_PREFIX}{k}": v for k, v in knn.state_dict().items()}
    state[KNN_SIDE_KEY] = torch.tensor([knn.settings.image_size], dtype=torch.long)
    return state


def load_reference_knn(
    state: dict[str, torch.Tensor], settings: PatchKnnSettings, device, region=None
) -> PatchKnn | None:
    """The reference patchknn (built with `settings`: `musc_references_knn_settings`) a saved musc model
    keeps, with the method's inspection region (None when the model has no reference patchknn)."""
    if KNN_SIDE_KEY not in state:
        return None
    knn = PatchKnn(settings).to(device)
    knn.region = region  # (patchknn passes it on to its partner)
    knn.use_image_size(int(state[KNN_SIDE_KEY][0]))
    own = {k[len(KNN_PREFIX) :]: v for k, v in state.items() if k.startswith(KNN_PREFIX) and k != KNN_SIDE_KEY}
    knn.load_state_dict(own)
    return knn
