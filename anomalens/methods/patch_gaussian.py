"""The memory bank's patches as one Gaussian: how far a query patch lies from the references'
patch distribution as a whole, beside its distance to the nearest reference patch (`gaussian_weight`).

The nearest-neighbour distance asks "was a patch like this one seen?"; a patch that falls between
normal patches in a direction along which normal patches hardly vary (a thin scratch's slight
change of texture on a plate whose texture is otherwise very regular) can still find a near
neighbour. The Mahalanobis distance to the bank's mean, under the bank's covariance, measures
exactly those directions (Rippel et al., "Modeling the distribution of normal data in pre-trained
deep features for anomaly detection", ICPR 2020, fit one Gaussian to whole-image features; PaDiM
fits one per location; here one Gaussian over all patches, so parts need not be aligned).

The default shrinkage adds twice the bank's mean variance to every direction, so the distance lies
between the Euclidean distance to the bank's mean patch and the full Mahalanobis distance: it still
weighs the directions normal patches hardly vary in most (in the squared distance a direction without
variance counts 1.5 times one of average variance, twice one of twice the average), without
trusting a few references' covariance completely. What a patch adds is the part of
its distance beyond the median the bank's own patches reach, so normal patches add about nothing.

The Gaussian is a function of the bank it is scored against: leave-one-out (a bank without one
reference's patches) and any bank a caller builds get their own, with nothing more to save in a
model. Fitting costs a covariance and a Cholesky factorisation (C x C, C about 150 on
EfficientNet-Lite0), so it is cached per bank tensor.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

# README "The references as one Gaussian" (issue 17, session 15; 3 seeds, 1 and 4 shots): weight 0.5 with
# shrinkage 2 raised the dev means of pixel AUROC and AUPRO (+0.1 / +0.6; mpdd_metal_plate AUPRO +0.9 / +0.6)
# and the demo's small defects (+1.9 / +1.1 / +2.1) for 0.25 of mean image AUROC (magnetic_tile -0.4 / -0.6).
DEFAULT_GAUSSIAN_WEIGHT = 0.5
# What a patch adds is its distance beyond this quantile of the bank's own patches' distances (clamped
# at 0): normal patches then add about nothing, and a score keeps its meaning (0 = like a reference).
GAUSSIAN_BASELINE_QUANTILE = 0.5
# Share of the mean variance added to the covariance's diagonal: a few references give a few thousand
# patches of about 150 channels, and directions the bank never varies in must not get infinite weight.
# Less shrinkage weighs the bank's narrow directions more: better on the demo's small defects and
# mpdd_metal_plate, worse on magnetic_tile's image AUROC (0.02, 0.1, 0.5, 2 measured: README); 2 cost the
# least image AUROC on the dev mean.
DEFAULT_GAUSSIAN_SHRINKAGE = 2.0


@dataclass(frozen=True)
class PatchGaussian:
    """Mean (C,) and `factor` (C, C) with inv(covariance) = factor factor^T, divided by sqrt(C), and the
    `baseline` distance that the fitted patches' own distances reach (GAUSSIAN_BASELINE_QUANTILE)."""

    mean: torch.Tensor
    factor: torch.Tensor
    baseline: float = 0.0

    @classmethod
    def fit(cls, patches: torch.Tensor, shrinkage: float = DEFAULT_GAUSSIAN_SHRINKAGE) -> PatchGaussian:
        """The Gaussian of (M, C) patches, its covariance shrunk towards `shrinkage` x its mean variance."""
        x = patches.reshape(-1, patches.shape[-1]).double()
        mean = x.mean(0)
        cov = torch.cov(x.T, correction=int(x.shape[0] > 1))  # one patch: a zero covariance, not NaN
        eye = torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device)
        floor = max(float(shrinkage * cov.diagonal().mean()), 1e-8)  # identical patches: still invertible
        cov = cov + floor * eye
        # cov = L L^T, so |L^-1 (x - mean)| is the Mahalanobis distance: factor = L^-T
        inverse = torch.linalg.solve_triangular(torch.linalg.cholesky(cov), eye, upper=False)
        # divided by sqrt(C): the distance is then about 1 for a typical patch, whatever the width
        fitted = cls(mean.float(), (inverse.T / cov.shape[0] ** 0.5).float())
        own = fitted.distance(x)
        return cls(fitted.mean, fitted.factor, float(torch.quantile(own.double(), GAUSSIAN_BASELINE_QUANTILE)))

    def distance(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., C) patches -> (...) Mahalanobis distances to the mean, divided by sqrt(C)."""
        return ((patches.float() - self.mean) @ self.factor).norm(dim=-1)

    def excess(self, patches: torch.Tensor) -> torch.Tensor:
        """(..., C) patches -> (...) their distance beyond the baseline, 0 below it: what patchknn adds."""
        return (self.distance(patches) - self.baseline).clamp_min(0.0)


# Fitted Gaussians by (id of the bank tensor, shrinkage); an entry leaves with its tensor (a tensor
# compares elementwise, so it cannot be a weak dictionary's key itself).
_FITTED: dict[tuple[int, float, int], tuple[int | None, PatchGaussian]] = {}


def _forget(bank_id: int) -> None:
    for key in [k for k in _FITTED if k[0] == bank_id]:
        del _FITTED[key]


def bank_gaussian(
    bank: torch.Tensor, shrinkage: float = DEFAULT_GAUSSIAN_SHRINKAGE, channels: int | None = None
) -> PatchGaussian:
    """The Gaussian of a bank's patches (of their first `channels` channels, default all), fitted once
    per bank tensor, shrinkage and channels (refitted when the tensor was changed in place)."""
    channels = bank.shape[-1] if channels is None else channels
    key = (id(bank), float(shrinkage), channels)
    version = None if bank.is_inference() else bank._version  # inference tensors keep no version counter
    cached = _FITTED.get(key)
    if cached is not None and cached[0] == version:
        return cached[1]
    if not any(k[0] == id(bank) for k in _FITTED):
        weakref.finalize(bank, _forget, id(bank))
    gaussian = PatchGaussian.fit(bank[:, :channels], shrinkage)
    _FITTED[key] = (version, gaussian)
    return gaussian
