"""`--describe` for the text methods: defect phrases for a category the vocabulary does not cover."""

from __future__ import annotations

from pathlib import Path

from ..text.prompts import DefectVocabulary, clean_class_name, load_defect_vocabulary
from .errors import DescribeError
from .generate import Backend, describe_category

#: Methods whose prompts can take the generated phrases (their `defects` setting).
TEXT_METHODS = ("fade", "winclip", "filo")


def covers(vocabulary: DefectVocabulary, category: str) -> bool:
    """Does the vocabulary have phrases of its own for ``category`` (not just the generic list)?"""
    names = {clean_class_name(k) for k in vocabulary.categories}
    return category in vocabulary.categories or clean_class_name(category) in names


def defects_for_run(
    method: str,
    category: str | None,
    backend_factory,
    vocabulary: str | Path | None = None,
    n: int = 8,
    log=None,
) -> list[str] | None:
    """Generated phrases for ``category``, or None when the vocabulary already covers it.

    ``backend_factory()`` is only called when phrases are needed (loading a model is slow).
    """
    if method not in TEXT_METHODS:
        raise DescribeError(f"--describe is for the text methods ({', '.join(TEXT_METHODS)}), not {method!r}")
    if not category:
        raise DescribeError("--describe needs --category: the product to describe")
    try:
        vocab = load_defect_vocabulary(vocabulary)
    except (ValueError, OSError) as err:
        raise DescribeError(str(err)) from err
    if covers(vocab, category):
        if log:
            log(f"note: {vocab.source} already has defects for {category!r}; --describe not needed, using those")
        return None
    backend: Backend = backend_factory()
    result = describe_category(backend, category, n=n)
    if not result.kept:
        raise DescribeError(f"--describe: the language model gave no usable defects for {category!r}")
    if log:
        log(f"described {category!r} with {backend.name} ({result.seconds:.0f} s): {'; '.join(result.kept)}")
    return result.kept
