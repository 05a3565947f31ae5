"""What every method provides, and the registry that picks one by name."""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

from ..errors import NotFittedError
from ..images import LoadedImage
from ..settings import build_settings


@dataclass
class MethodOutput:
    """A method's verdict on one image; the map has the image's height and width."""

    score: float
    anomaly_map: np.ndarray
    descriptions: list[tuple[str, float]] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # method-specific JSON fields for results.jsonl
    # (H, W) bool: the pixels that counted, with an inspection region (anomalens.inspection_region)
    inspected: np.ndarray | None = None


class Method(ABC):
    """A detection method: settings in, `fit` on reference images, `predict` on queries.

    The contract (tests/test_method_contract.py runs it over every registered method):
    a `Settings` dataclass (anomalens.settings) whose defaults are the paper's values; a
    constructor `(settings, backbone=None, ...)` that builds its backbone unless one is given;
    `_fit`, `_predict` and optionally a faster `_leave_one_out`; learned state in attributes with
    a trailing underscore (scikit-learn's convention) and in the tensors of `state_dict`, which
    `load_state_dict` restores; `set_category` for methods with prompts. `predict` before any
    `fit` raises NotFittedError (the Detector fits zero-shot itself).
    """

    name: ClassVar[str]
    Settings: ClassVar[type]
    uses_text: ClassVar[bool] = False  # whether the method returns defect descriptions
    # True for methods that score a batch jointly (each image against the others, `musc`): the
    # run loop then passes every image of a run to one `predict` call instead of small batches.
    scores_jointly: ClassVar[bool] = False
    # True for methods whose image score and map can be restricted to an inspection region
    # (anomalens.inspection_region); the Detector refuses a region for the others.
    supports_region: ClassVar[bool] = False

    def __init__(self, settings: Any):
        self.settings = settings
        self.region = None  # an InspectionRegion (set by the Detector), or None: the whole image
        self.num_references = 0
        self.fitted_ = False  # set by fit, leave_one_out and load_state_dict
        self.device = torch.device("cpu")

    def to(self, device: str | torch.device) -> Method:
        """Move every module and tensor this method holds to `device` (see anomalens.device);
        methods move their model inputs to `self.device` and return maps on the CPU."""
        from ..device import move_to

        device = torch.device(device)
        for name, value in list(vars(self).items()):
            if name not in ("device", "settings"):
                setattr(self, name, move_to(value, device))
        self.device = device
        return self

    @classmethod
    def from_kwargs(cls, **kwargs: Any) -> Method:
        return cls(build_settings(cls.Settings, kwargs))

    def describe_backbone(self) -> str:
        """The backbone's name for results and reports (every method has `self.backbone`)."""
        return self.backbone.name

    def describe_fit(self) -> str | None:
        """A line on what `fit` chose from the references, for the user (None: nothing to say)."""
        return None

    def set_category(self, name: str) -> None:
        """Name the object class the prompts describe (updates `settings.category`, so a saved
        model keeps it). Methods without text have no category and ignore it."""
        return None

    # The public calls keep the bookkeeping (fitted or not) and delegate to what subclasses write.
    def fit(self, references: list[LoadedImage]) -> Method:
        """Learn from good reference images (few-shot); an empty list means zero-shot."""
        # A list is passed as it is (a ReportingList reports progress as the method goes through it).
        self._fit(references if isinstance(references, list) else list(references))
        self.fitted_ = True
        return self

    def predict(self, images: list[LoadedImage]) -> list[MethodOutput]:
        """Score a batch of images (NotFittedError before `fit`, `leave_one_out` or loading)."""
        if not self.fitted_:
            raise NotFittedError(
                f"{self.name} is not fitted: call fit(references) first (fit([]) for zero-shot) or load a saved state"
            )
        return self._predict(images)  # a list, or a stream for methods that score jointly

    def predict_joint(self, images: Iterable[LoadedImage]) -> Iterator[MethodOutput]:
        """For `scores_jointly` methods: score all images as one batch, then yield the outputs.

        The scoring happens in the call; the outputs (with their full-size maps) are made one
        by one as they are consumed, so a large batch never holds every full-size map at once.
        """
        return iter(self.predict(list(images)))

    def leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """Score each held-out reference with the method fitted on all the others; end fitted on all."""
        outputs = self._leave_one_out(references if isinstance(references, list) else list(references), held_out)
        self.fitted_ = True
        return outputs

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Restore what `state_dict` returned (the method is then fitted)."""
        self._load_state_dict(state)
        self.fitted_ = True

    def state_dict(self) -> dict[str, torch.Tensor]:
        """All learned state as tensors (saved with safetensors)."""
        return {}

    @abstractmethod
    def _fit(self, references: list[LoadedImage]) -> None: ...

    @abstractmethod
    def _predict(self, images: list[LoadedImage]) -> list[MethodOutput]: ...

    def _leave_one_out(self, references: list[LoadedImage], held_out: list[int]) -> list[MethodOutput]:
        """The generic version refits once per held-out image; methods with a memory bank
        override it to extract features once (the contract test checks both agree)."""
        outputs = []
        for i in held_out:
            self.fit(references[:i] + references[i + 1 :])
            outputs.extend(self.predict([references[i]]))
        self.fit(references)
        return outputs

    def _load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        return None


def settings_to_dict(settings: Any) -> dict[str, Any]:
    return dataclasses.asdict(settings)


METHODS: dict[str, type[Method]] = {}


def register_method(cls: type[Method]) -> type[Method]:
    METHODS[cls.name] = cls
    cls.Settings.owner = cls.name  # names the method in settings errors
    return cls


def saved_settings(name: str, saved: dict[str, Any]) -> dict[str, Any]:
    """A saved model's settings, completed for settings added since with the values it was made with."""
    from . import load_method

    method = load_method(name) if isinstance(name, str) else None
    older = getattr(method.Settings, "absent_in_older_models", {}) if method is not None else {}
    return {**older, **saved}


def create_method(name: str, **settings: Any) -> Method:
    from . import load_method

    load_method(name)  # importing the method's module registers it

    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; available: {', '.join(sorted(METHODS))}")
    return METHODS[name].from_kwargs(**settings)
