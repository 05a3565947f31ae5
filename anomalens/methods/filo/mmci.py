"""FiLo's Multi-shape Multi-scale Cross-modal Interaction (MMCI) and the map equations 2-4.

For one layer's patch grid P (B, width, h, w), each kernel k of MMCI gives Conv_k(P) in the
text space; every output is compared with F = [Fn, Fa] and turned into a two-class map:

    Eq. 2   M^l = Up( Norm( sum_k softmax(cos(Conv_k(P), F) / T) ) )
    Eq. 3   M   = Norm( sum_l M^l )
    Eq. 4   M_final = G_sigma( M_a + 1 - M_n ) / 2

"Norm" divides by the number of summed maps, so every map stays a per-pixel two-class
distribution (M_n + M_a = 1); Eq. 4 then lies in [0, 1]. The softmax runs over the class axis
(normal, abnormal) of each pixel.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: The paper's kernels: four square scales and two bar shapes, (height, width).
MMCI_KERNELS: tuple[tuple[int, int], ...] = ((1, 1), (3, 3), (5, 5), (7, 7), (1, 5), (5, 1))

#: Temperature of the patch-text cosine similarity (AnomalyCLIP's 0.07; CLIP's own logit scale
#: 100 corresponds to 0.01).
DEFAULT_TEMPERATURE = 0.07


class MMCI(nn.Module):
    """One layer's convolutions (width -> text embed dim), 'same' padding so the grid is kept."""

    def __init__(self, width: int, embed_dim: int, kernels: tuple[tuple[int, int], ...] = MMCI_KERNELS):
        super().__init__()
        self.kernels = tuple(tuple(k) for k in kernels)
        self.convs = nn.ModuleList(nn.Conv2d(width, embed_dim, k, padding="same") for k in self.kernels)

    def forward(self, grid: torch.Tensor) -> list[torch.Tensor]:
        """(B, width, h, w) -> one (B, embed_dim, h, w) tensor per kernel."""
        return [conv(grid) for conv in self.convs]


def class_map(features: torch.Tensor, text: torch.Tensor, temperature: float = DEFAULT_TEMPERATURE) -> torch.Tensor:
    """softmax over [Fn, Fa] of cos(feature, F) / T for every pixel.

    features (B, D, h, w), text (B, 2, D) -> (B, 2, h, w); channel 0 normal, 1 abnormal.
    """
    f = F.normalize(features, dim=1)
    t = F.normalize(text, dim=-1)
    logits = torch.einsum("bdhw,bcd->bchw", f, t) / temperature
    return logits.softmax(dim=1)


def layer_map(kernel_maps: list[torch.Tensor], size: tuple[int, int]) -> torch.Tensor:
    """Eq. 2: the kernels' two-class maps summed, normalised (mean) and upsampled (bilinear)."""
    summed = torch.stack(kernel_maps).sum(dim=0) / len(kernel_maps)
    return F.interpolate(summed, size=size, mode="bilinear", align_corners=False)


def combine_layers(layer_maps: list[torch.Tensor]) -> torch.Tensor:
    """Eq. 3: the layers' maps summed and normalised (mean), still a two-class map."""
    return torch.stack(layer_maps).sum(dim=0) / len(layer_maps)


def gaussian_kernel1d(sigma: float, truncate: float = 4.0, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """scipy.ndimage's 1-D Gaussian: radius int(truncate * sigma + 0.5), weights summing to 1."""
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    w = torch.exp(-0.5 * (x / sigma) ** 2)
    return (w / w.sum()).to(dtype)


def _reflect_index(n: int, pad: int, device: torch.device) -> torch.Tensor:
    """Indices for scipy's 'reflect' border (d c b a | a b c d | d c b a), any pad width."""
    i = torch.arange(-pad, n + pad, device=device) % (2 * n)
    return torch.where(i >= n, 2 * n - 1 - i, i)


def gaussian_filter(x: torch.Tensor, sigma: float, truncate: float = 4.0) -> torch.Tensor:
    """Separable Gaussian blur of (..., H, W) maps matching scipy.ndimage.gaussian_filter (mode 'reflect')."""
    if sigma <= 0:
        return x
    k = gaussian_kernel1d(sigma, truncate, x.dtype).to(x.device)
    pad = (k.numel() - 1) // 2
    shape = x.shape
    y = x.reshape(-1, 1, shape[-2], shape[-1])
    y = y.index_select(3, _reflect_index(shape[-1], pad, x.device))
    y = F.conv2d(y, k.view(1, 1, 1, -1))
    y = y.index_select(2, _reflect_index(shape[-2], pad, x.device))
    y = F.conv2d(y, k.view(1, 1, -1, 1))
    return y.reshape(shape)


def final_map(two_class: torch.Tensor, sigma: float = 4.0) -> torch.Tensor:
    """Eq. 4: G_sigma(M_a + 1 - M_n) / 2, (B, 2, H, W) -> (B, H, W)."""
    return gaussian_filter(two_class[:, 1] + 1.0 - two_class[:, 0], sigma) / 2.0


def grid_of(tokens: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """(B, 1 + h*w, C) tokens with the class token first -> (B, C, h, w) patch grid."""
    b, n, c = tokens.shape
    h, w = grid
    if n - 1 != h * w:
        raise ValueError(f"{n - 1} patch tokens do not fill a {h}x{w} grid")
    return tokens[:, 1:].transpose(1, 2).reshape(b, c, h, w)
