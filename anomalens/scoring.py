"""Vision-guided patch scoring, as FADE defines it: distance to the k-th nearest neighbour.

A patch's anomaly is 0.5 * (1 - cosine similarity) to its k-th most similar patch in a memory
bank (so it lies in [0, 1]). Few-shot: the bank holds the reference images' patches and k = 1.
Zero-shot: the bank is the query image's own patches, which contains the patch itself, so
k = 2 gives its nearest *other* patch (as in the FADE authors' code).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FEW_SHOT_K = 1
ZERO_SHOT_K = 2


def knn_anomaly(
    query: torch.Tensor, bank: torch.Tensor, k: int = FEW_SHOT_K, chunk: int = 4096
) -> torch.Tensor:
    """Anomaly of each query patch: 0.5 * (1 - cos) to its k-th nearest bank patch.

    query: (N, C), bank: (M, C); both are L2-normalised here, so a matrix product gives the
    cosine similarities. Query rows are processed in chunks to bound memory.
    """
    if bank.shape[0] < k:
        raise ValueError(f"memory bank has {bank.shape[0]} patches, fewer than k={k}")
    query = F.normalize(query.float(), dim=-1)
    bank = F.normalize(bank.float(), dim=-1)
    out = torch.empty(query.shape[0], device=query.device)
    for start in range(0, query.shape[0], chunk):
        sim = query[start : start + chunk] @ bank.T
        kth = sim.topk(k, dim=1).values[:, k - 1]
        out[start : start + chunk] = 0.5 * (1.0 - kth)
    return out.clamp_(0.0, 1.0)


class MemoryBank:
    """Reference patches as one (M, C) matrix per feature scale."""

    movable_state = True  # anomalens.device.move_to moves it with its method

    def __init__(self) -> None:
        self.banks: dict[str, torch.Tensor] = {}

    def to(self, device: torch.device) -> MemoryBank:
        self.banks = {k: v.to(device) for k, v in self.banks.items()}
        return self

    def add(self, key: str, patches: torch.Tensor) -> None:
        patches = F.normalize(patches.reshape(-1, patches.shape[-1]).float(), dim=-1)
        self.banks[key] = torch.cat([self.banks[key], patches]) if key in self.banks else patches

    def __contains__(self, key: str) -> bool:
        return key in self.banks

    def __len__(self) -> int:
        return len(self.banks)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {f"bank.{k}": v.contiguous() for k, v in self.banks.items()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.banks = {k[len("bank.") :]: v for k, v in state.items() if k.startswith("bank.")}
