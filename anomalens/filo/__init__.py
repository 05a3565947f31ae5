"""FiLo (Gu et al., ACM MM 2024): fine-grained descriptions and high-quality localization.

Modules: `prompt_learner` (FG-Des prompts and learnable context), `mmci` (multi-shape multi-scale
convolutions and Eqs. 2-4), `adapter` (global branch, Eq. 1), `losses`, `model` (the network),
`train` (training loop, checkpoints), `cli` (`anomalens train filo`). The detection method is
`anomalens.methods.filo`, Grounding DINO boxes are in `anomalens.grounding`.
"""

from .adapter import Adapter, global_logits, global_score
from .losses import dice_loss, focal_loss, global_loss, local_loss
from .mmci import MMCI, MMCI_KERNELS, class_map, combine_layers, final_map, gaussian_filter, layer_map
from .model import FiloConfig, FiloModel, FiloOutput, top_descriptions
from .prompt_learner import PromptLearner, PromptSet, build_prompts, encode_text_embeddings, group_features
from .train import MissingCheckpointError, TrainConfig, read_trained, train_filo

__all__ = [
    "MMCI",
    "MMCI_KERNELS",
    "Adapter",
    "FiloConfig",
    "FiloModel",
    "FiloOutput",
    "MissingCheckpointError",
    "PromptLearner",
    "PromptSet",
    "TrainConfig",
    "build_prompts",
    "class_map",
    "combine_layers",
    "dice_loss",
    "encode_text_embeddings",
    "final_map",
    "focal_loss",
    "gaussian_filter",
    "global_logits",
    "global_loss",
    "global_score",
    "group_features",
    "layer_map",
    "local_loss",
    "read_trained",
    "top_descriptions",
    "train_filo",
]
