"""References from an unlabeled folder: the images that musc ranks most typical.

A plant starting on a new product often has a folder of production images and no known-good set.
Single-image zero-shot cannot tell a part's own marks (a stamped code, a hole) from a defect: both
occur once in the image (README "A part's own marks"). Scored against each other, the images of one
product vouch for what they share, so the lowest mutual scores are nearly all normal (on our data 0
of 14 on mpdd_metal_plate, 4 of 114 on magnetic_tile: README "Pseudo-references"). Those images,
used as references, give a few-shot model that scores single images, streams and a server at
patchknn's speed: `anomalens fit --unlabeled DIR --out MODEL`.

Since session 33 the images are picked as musc picks its pseudo-references (`pseudo_reference_rounds`):
the mutual score picks the share, patchknn fitted on them scores the folder, and the share that the
joined score (the mutual score with patchknn's) ranks lowest are picked again (`rounds` 1: the mutual
score alone, the rule before).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .errors import ImageLoadError
from .image_reading import ImageReading
from .images import list_images

# The share of an unlabeled folder taken as references: musc's `pseudo_reference_share`. README "No
# known-good images": a fifth is ahead on the two real categories, a tenth on pixel AUROC and AUPRO once
# the marked copies count too (a larger share lets more defects in: 20 of 114 in one draw); a tenth is
# the safer of two near-equal choices
DEFAULT_TYPICAL_SHARE = 0.1
# Fewer chosen images than this is refused: one image's bank leaves nothing to calibrate or compare
DEFAULT_TYPICAL_MINIMUM = 2
# Picks, as musc's `pseudo_reference_rounds`. Half test sets as the folder (README "No known-good images",
# session 33): magnetic_tile 80.5 / 78.0 / 75.9 -> 82.2 / 77.7 / 75.7, mpdd_metal_plate 98.8 / 99.1 / 95.0 ->
# 99.0 / 99.2 / 95.4 (image AUROC / pixel AUROC / AUPRO of patchknn on the chosen images)
DEFAULT_TYPICAL_ROUNDS = 2


@dataclass
class TypicalImages:
    """What `choose_typical_images` found: the chosen paths (most typical first) and how."""

    chosen: list[str]
    mutual_scores: dict[str, float]  # every scored image's mutual score (lower: more typical)
    share: float
    failed: list[ImageLoadError] = field(default_factory=list)
    rounds: int = 1  # picks made (1: the mutual score alone)
    # with a second pick: every image's score joined with patchknn's on the first pick (what ranked it)
    joined_scores: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "share": self.share,
            "rounds": self.rounds,
            "considered": len(self.mutual_scores),
            "chosen": self.chosen,
            "mutual_scores": self.mutual_scores,
            "joined_scores": self.joined_scores,
            "failed": {err.path: err.reason for err in self.failed},
        }


def typical_count(share: float, minimum: int, images: int) -> int:
    """How many of `images` are chosen: `share` of them rounded half up, at least `minimum` (musc's
    `pseudo_reference_count` takes none below its minimum instead: there they are an extra, here the
    whole reference set)."""
    return max(minimum, math.floor(share * images + 0.5))


def choose_typical_images(
    images: Iterable[str | os.PathLike],
    share: float = DEFAULT_TYPICAL_SHARE,
    minimum: int = DEFAULT_TYPICAL_MINIMUM,
    device: str = "auto",
    reading: ImageReading | None = None,
    log: Callable[[str], None] | None = None,
    region: Any = None,
    rounds: int = DEFAULT_TYPICAL_ROUNDS,
    **musc_settings: Any,
) -> TypicalImages:
    """Score `images` (files or folders) against each other with musc and keep the `share` ranked lowest.

    `rounds` 1: the mutual score alone decides. 2 (or more): musc picks them as its pseudo-references, the
    mutual score first, then the score joined with patchknn's on that pick (`pseudo_reference_rounds`); a
    folder too small for musc's pick (fewer than `minimum` images in the share) is ranked by the mutual
    score. Unreadable images are reported in `failed` and left out; ties are broken by path, so the choice
    does not depend on the order. Raises ValueError when fewer than `minimum` + 1 images can be scored (the
    chosen ones must leave others to compare them with). `region`: an inspection region
    (anomalens.inspection_region): the ranking reads only its pixels.
    """
    from .detector import Detector
    from .methods.musc.pseudo_references import lowest_scored

    if not 0 < share < 1:
        raise ValueError(f"the share of typical images must lie between 0 and 1, got {share}")
    if rounds < 1:
        raise ValueError(f"rounds must be at least 1, got {rounds}")
    files = list_images(list(images))
    picks = {"pseudo_reference_share": share, "pseudo_reference_minimum": minimum, "pseudo_reference_rounds": rounds}
    settings = {**(picks if rounds > 1 else {"pseudo_reference_share": 0.0}), **musc_settings}
    det = Detector("musc", device=device, reading=reading, region=region, **settings)
    det.fit([])
    # ranked, not scored: the pick is made before musc's outputs (its maps) would be
    failed = det.rank_jointly([str(f) for f in files])
    for err in failed if log is not None else []:
        log(f"skipped {err.path}: {err.reason}")
    ranking, paths = det.method.last_ranking, det.method.last_batch.get("images", [])
    scores = dict(zip(paths, ranking.get("mutual") or []))
    count = typical_count(share, minimum, len(scores))
    if count >= len(scores):
        enough = next(n for n in range(minimum + 1, 10**6) if typical_count(share, minimum, n) < n)
        raise ValueError(
            f"{len(scores)} readable images cannot give {count} typical ones and others to rank them "
            f"against: give at least {enough} images"
        )
    picked = det.method.last_batch.get("pseudo_references") or []
    if picked:  # musc's last pick (`count` images: its share and minimum are these), by the joined score
        joined = dict(zip(paths, ranking["picked_by"]))
        chosen = sorted(picked, key=lambda p: (joined[p], p))
        return TypicalImages(chosen, scores, share, failed, rounds, joined_scores=joined)
    # one round, or a folder too small for musc's pick: the mutual score alone
    chosen = [paths[i] for i in lowest_scored([scores[p] for p in paths], paths, count)]
    return TypicalImages(chosen, scores, share, failed)
