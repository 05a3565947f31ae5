"""What every method provides, and the registry that picks one by name."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..images import LoadedImage
from ..settings import build_settings


@dataclass
class MethodOutput:
    """A method's verdict on one image; the map has the image's height and width."""

    score: float
    anomaly_map: np.ndarray
    descriptions: list[tuple[str, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # method-specific JSON fields for results.jsonl


class Method(ABC):
    """A detection method: settings in, `fit` on reference images, `predict` on queries.

    Subclasses declare a `Settings` dataclass whose defaults are the paper's values, and keep
    all learned state in tensors returned by `state_dict` so a fitted detector can be saved.
    """

    name: ClassVar[str]
    Settings: ClassVar[type]

    def __init__(self, settings: Any):
        self.settings = settings
        self.num_references = 0

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Method:
        return cls(build_settings(cls.Settings, kwargs))

    @property
    def uses_text(self) -> bool:
        return False

    def describe_backbone(self) -> str:
        return ""

    def set_category(self, name: str) -> None:
        """Name the object class the prompts describe (updates `settings.category`, so a saved
        model keeps it). Methods without text have no category and ignore it."""
        return None

    @abstractmethod
    def fit(self, references: list[LoadedImage]) -> None:
        """Learn from good reference images (few-shot); an empty list means zero-shot."""

    @abstractmethod
    def predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        """Score a batch of images."""

    def leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Score each held-out reference with the method fitted on all the others; end fitted on all.

        This generic version refits once per held-out image; methods with a memory bank
        override it to extract features once.
        """
        outputs = []
        for i in held_out:
            self.fit(references[:i] + references[i + 1 :])
            outputs.extend(self.predict([references[i]]))
        self.fit(references)
        return outputs

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


def settings_to_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    cls.Settings.owner = cls.name  # names the method in settings errors
    return cls


def create_method(name: str, **settings: Any) -> Method:
    from . import available_methods

    available_methods()  # importing the method modules registers them

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name].from_kwargs(**settings)
