"""Text features computed once per (category, prompt ensemble, backbone weights) and cached.

The key hashes the prompt texts themselves and a fingerprint of the text tower's weights, so
any change of category name, ensemble file or backbone gives a new entry (invalidation by
construction). Entries live in memory for the process and, when `cache_dir` is set (default
$ANOMALENS_CACHE or ~/.cache/anomalens), on disk as safetensors.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import torch

from .prompts import ensemble_fingerprint


def default_cache_dir() -> Path | None:
    value = os.environ.get("ANOMALENS_CACHE")
    if value == "":
        return None  # ANOMALENS_CACHE= (empty) disables the disk cache
    return Path(value) if value else Path.home() / ".cache" / "anomalens" / "text_features"


def text_tower_fingerprint(model: torch.nn.Module) -> str:
    """A cheap digest of the text tower's weights (enough to tell checkpoints apart)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        if name.startswith("visual."):
            continue
        flat = tensor.detach().reshape(-1)
        # A strided sample of each tensor: hashing all ~60M text weights would cost seconds.
        step = max(1, flat.numel() // 4096)
        h.update(name.encode())
        h.update(flat[::step].float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


class TextFeatureCache:
    """Maps (backbone, list of prompt lists) to their L2-normalised embeddings."""

    def __init__(self, cache_dir: Path | str | None = "default"):
        self.cache_dir = (
            default_cache_dir() if cache_dir == "default" else (Path(cache_dir) if cache_dir else None)
        )
        self._memory: dict[str, torch.Tensor] = {}
        self._fingerprints: dict[int, str] = {}
        self.computed = 0  # how many times features were actually computed (for tests and logs)

    def key(self, backbone, texts: list[str]) -> str:
        fp = self._fingerprints.get(id(backbone.model))
        if fp is None:
            fp = self._fingerprints[id(backbone.model)] = text_tower_fingerprint(backbone.model)
        return hashlib.sha256(f"{backbone.arch}|{fp}|{ensemble_fingerprint(texts)}".encode()).hexdigest()[:24]

    def encode(self, backbone, texts: list[str]) -> torch.Tensor:
        """(len(texts), embed_dim) unit-norm text embeddings on the backbone's device, from cache when possible.

        Entries are kept on the CPU, so detectors on different devices can share the cache.
        """
        device = next(backbone.model.parameters()).device
        return self._encode_cpu(backbone, texts).to(device)

    def _encode_cpu(self, backbone, texts: list[str]) -> torch.Tensor:
        key = self.key(backbone, texts)
        if key in self._memory:
            return self._memory[key]
        path = self.cache_dir / f"{key}.safetensors" if self.cache_dir else None
        if path is not None and path.exists():
            from safetensors.torch import load_file

            try:
                feats = load_file(str(path))["features"]
                self._memory[key] = feats
                return feats
            except Exception:  # a damaged cache file is recomputed, never trusted
                pass
        feats = backbone.encode_text(texts).cpu()
        self.computed += 1
        self._memory[key] = feats
        if path is not None:
            try:
                from safetensors.torch import save_file

                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp")
                save_file({"features": feats.contiguous()}, str(tmp))
                tmp.replace(path)
            except OSError:
                pass  # a read-only home must not stop detection
        return feats


DEFAULT_CACHE = TextFeatureCache()
