"""FiLo (Gu et al., ACM MM 2024): fine-grained descriptions and high-quality localization.

One folder for the method:

* `method`: the detection method `filo` (inference; never imports the training loop),
* `model`: the network (frozen CLIP + prompts, MMCI, linear heads, adapter), paper or released,
* `released`: the released code's inference, reproduced for the authors' checkpoints,
* `prompts`: state words and sentence templates; `prompt_learner`: learnable context,
* `mmci`, `adapter`, `losses`: the equations,
* `grounding`: Grounding DINO boxes, box weights and position words,
* `checkpoint`: our checkpoint format, the released `.pth`, the CLIP weights rule,
* `train`, `train_data`: `anomalens train filo`.
"""

from .method import Filo, FiloSettings

__all__ = ["Filo", "FiloSettings"]
