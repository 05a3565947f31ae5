"""Ask a backend, clean, repeat until enough: defect lists per category and ensemble sentences."""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from .clean import CleaningRules, clean_items, normalise_item
from .errors import DescribeError, UnusableAnswer


class Backend(Protocol):
    """What :func:`describe_category` and :func:`generate_sentences` need from a language model."""

    name: str
    model_name: str

    def defect_items(self, category: str, n: int, context: str | None, attempt: int) -> list[str]: ...

    def sentences(self, kind: str, n: int, batch: int) -> list[str]: ...


@dataclass
class CategoryResult:
    """The cleaned list for one category, what was dropped and why, and the time it took."""

    category: str
    kept: list[str]
    dropped: list[tuple[str, str]] = field(default_factory=list)
    attempts: int = 0
    seconds: float = 0.0


def describe_category(
    backend: Backend,
    category: str,
    n: int = 8,
    context: str | None = None,
    rules: CleaningRules | None = None,
    existing: Iterable[str] = (),
    max_attempts: int = 3,
) -> CategoryResult:
    """Up to ``n`` cleaned defect phrases for ``category`` that are not already in ``existing``.

    The backend is asked again (another seed) while fewer than ``n`` phrases survived the
    cleaning, at most ``max_attempts`` times. Phrases beyond ``n`` are reported as dropped.
    """
    if n < 1:
        raise ValueError(f"--n must be at least 1, got {n}")
    start = time.perf_counter()
    existing = list(existing)
    result = CategoryResult(category=category, kept=[])
    problems: list[str] = []
    for attempt in range(max_attempts):
        result.attempts = attempt + 1
        try:
            raw = backend.defect_items(category, n, context, attempt)
        except UnusableAnswer as err:
            problems.append(str(err))
            continue
        cleaned = clean_items(raw, category, rules, keep=[*existing, *result.kept])
        room = n - len(result.kept)
        result.kept += cleaned.kept[:room]
        result.dropped += cleaned.dropped + [(item, f"over --n {n}") for item in cleaned.kept[room:]]
        if len(result.kept) >= n:
            break
    result.seconds = time.perf_counter() - start
    if not result.kept and problems:
        raise DescribeError(f"{category}: no usable answer in {max_attempts} attempts; last: {problems[-1]}")
    return result


def clean_sentence(text: str) -> str:
    """An ensemble sentence: numbering and quotes stripped, whitespace collapsed, one final period."""
    words = " ".join(text.split())
    words = re.sub(r"^\s*(?:[-*\u2022]+|\(?\d+[.):\]])\s*", "", words).strip("\"'`\u201c\u201d ")
    words = words.rstrip(".!;: ")
    return f"{words[:1].lower()}{words[1:]}." if words else ""


def generate_sentences(
    backend: Backend,
    kind: str,
    n: int = 400,
    batch_size: int = 50,
    max_batches: int | None = None,
    forbidden_words: Iterable[str] = (),
    max_words: int = 30,
    log=None,
) -> tuple[list[str], list[tuple[str, str]]]:
    """Up to ``n`` distinct object-agnostic sentences (FADE's ensemble) and the ones dropped.

    Sentences are asked for in batches of ``batch_size`` (one request each) until ``n``
    distinct ones were kept or ``max_batches`` (default: twice the batches needed) were
    asked. Dropped: empty, over ``max_words`` words, duplicates (ignoring case and
    punctuation) and sentences naming one of ``forbidden_words`` (e.g. dataset categories,
    which would make the ensemble object-specific).
    """
    if kind not in ("normal", "abnormal"):
        raise ValueError(f"--ensemble must be 'normal' or 'abnormal', got {kind!r}")
    if n < 1 or batch_size < 1:
        raise ValueError("--n and the batch size must be at least 1")
    batches = max_batches or 2 * -(-n // batch_size)
    forbidden = [w.lower() for w in forbidden_words if w]
    kept: list[str] = []
    seen: set[str] = set()
    dropped: list[tuple[str, str]] = []
    for batch in range(batches):
        if len(kept) >= n:
            break
        try:
            raw = backend.sentences(kind, min(batch_size, n - len(kept)), batch)
        except UnusableAnswer as err:
            dropped.append((f"batch {batch}", str(err)))
            continue
        for original in raw:
            sentence = clean_sentence(original)
            key = normalise_item(sentence)
            words = set(re.findall(r"[a-z]+", key))
            if not sentence:
                reason = "empty"
            elif len(sentence.split()) > max_words:
                reason = "too long"
            elif key in seen:
                reason = "duplicate"
            elif any((" " in w and w in key) or w in words for w in forbidden):
                reason = "names a specific object"
            elif len(kept) >= n:
                reason = f"over --n {n}"
            else:
                seen.add(key)
                kept.append(sentence)
                continue
            dropped.append((original.strip(), reason))
        if log:
            log(f"batch {batch + 1}: {len(kept)}/{n} sentences")
    if not kept:
        raise DescribeError(f"no usable {kind} sentences in {batches} requests")
    return kept, dropped
