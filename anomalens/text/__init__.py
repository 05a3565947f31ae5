"""Text prompts for the language-guided anomaly detectors."""

from anomalens.text.prompts import (
    ANOMALOUS_STATES,
    MVTEC_CATEGORIES,
    NORMAL_STATES,
    POSITIONS,
    TEMPLATES,
    VISA_CATEGORIES,
    DefectVocabulary,
    PromptEnsemble,
    clean_class_name,
    defect_prompts,
    ensemble_fingerprint,
    fade_segmentation_prompts,
    load_defect_vocabulary,
    load_ensemble,
    position_word,
    winclip_prompts,
)

__all__ = [
    "ANOMALOUS_STATES",
    "MVTEC_CATEGORIES",
    "NORMAL_STATES",
    "POSITIONS",
    "TEMPLATES",
    "VISA_CATEGORIES",
    "DefectVocabulary",
    "PromptEnsemble",
    "clean_class_name",
    "defect_prompts",
    "ensemble_fingerprint",
    "fade_segmentation_prompts",
    "load_defect_vocabulary",
    "load_ensemble",
    "position_word",
    "winclip_prompts",
]
