"""Defect descriptions and sentence ensembles written by a language model (``anomalens describe``).

* :mod:`.prompt`: what the models are asked (few-shot completion; chat asking for JSON)
* :mod:`.embedded`: offline Gemma 3 270M (GGUF from PyPI, cached as safetensors)
* :mod:`.api`: an OpenAI-compatible ``/v1/chat/completions`` endpoint
* :mod:`.clean`: the cleaning filter, with the reason for every dropped item
* :mod:`.generate`: ask, clean, ask again until enough
* :mod:`.vocabulary`: write/merge the vocabulary and ensemble JSON files the methods read
"""

from .api import API_KEY_ENV, EndpointBackend, EndpointSettings
from .clean import DEFECT_STEMS, CleaningRules, CleanResult, clean_items, normalise_item, split_items
from .embedded import CACHE_ENV, EmbeddedBackend, GenerationSettings, default_cache_dir, load_cached_model
from .errors import DescribeError, UnusableAnswer
from .generate import CategoryResult, describe_category, generate_sentences
from .prompt import completion_prompt, defects_messages, ensemble_messages
from .vocabulary import vocabulary_entries, write_ensemble, write_vocabulary


def make_backend(llm: str = "embedded", model: str | None = None, seed: int = 0, timeout: float = 60.0, log=None):
    """The backend for ``--llm``: "embedded" or an endpoint URL such as http://localhost:8080/v1."""
    if llm == "embedded":
        return EmbeddedBackend(settings=GenerationSettings(seed=seed), log=log)
    return EndpointBackend(llm, EndpointSettings(model=model or "default", seed=seed, timeout=timeout))


__all__ = [
    "API_KEY_ENV",
    "CACHE_ENV",
    "DEFECT_STEMS",
    "CategoryResult",
    "CleanResult",
    "CleaningRules",
    "DescribeError",
    "EmbeddedBackend",
    "EndpointBackend",
    "EndpointSettings",
    "GenerationSettings",
    "UnusableAnswer",
    "clean_items",
    "completion_prompt",
    "default_cache_dir",
    "defects_messages",
    "describe_category",
    "ensemble_messages",
    "generate_sentences",
    "load_cached_model",
    "make_backend",
    "normalise_item",
    "split_items",
    "vocabulary_entries",
    "write_ensemble",
    "write_vocabulary",
]
