"""What the language models are asked.

The embedded model is a *base* model (not instruction-tuned), so it gets a completion
prompt: a header line, a few "product: defect, defect, ..." lines written for this project
(products that are not MVTec AD or VisA categories, so the answer is not copied from an
example), then the new product and a colon. An endpoint gets a chat prompt asking for JSON.
"""

from __future__ import annotations

from ..text.prompts import clean_class_name

#: Few-shot lines for the completion prompt: (product, defects). Written for this project.
FEW_SHOT_EXAMPLES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("ceramic mug", ("chipped rim", "hairline crack", "glaze bubble", "handle broken off", "uneven glaze")),
    ("rubber gasket", ("torn edge", "air bubble", "flattened section", "cut in the lip", "missing piece")),
    ("printed label", ("smudged ink", "misaligned print", "torn corner", "wrinkled paper", "missing text")),
    ("aluminium can", ("dented side", "scratched paint", "bent rim", "punctured wall", "leaking seam")),
    ("wooden chair", ("cracked leg", "loose joint", "scratched varnish", "splintered edge", "stain on the seat")),
)

COMPLETION_HEADER = "Visible defects found by quality inspectors, listed for each manufactured product."


def product_name(category: str) -> str:
    """A folder name as words for a prompt: "metal_nut" -> "metal nut", "macaroni1" -> "macaroni"."""
    return clean_class_name(category) or " ".join(category.split()).lower()


def completion_prompt(category: str, context: str | None = None) -> str:
    """The few-shot completion prompt for a base model; the answer is the rest of the last line."""
    lines = [COMPLETION_HEADER]
    lines += [f"{product}: {', '.join(defects)}" for product, defects in FEW_SHOT_EXAMPLES]
    name = product_name(category)
    if context:
        name = f"{name} ({' '.join(context.split())})"
    lines.append(f"{name}:")
    return "\n".join(lines)


DEFECTS_SYSTEM = "You help engineers set up visual quality inspection. You answer with JSON only, no prose."


def defects_messages(category: str, n: int, context: str | None = None) -> list[dict[str, str]]:
    """Chat messages asking an instruction-tuned model for ``n`` defect phrases as JSON."""
    name = product_name(category)
    about = f" ({' '.join(context.split())})" if context else ""
    examples = "; ".join(f"{p}: {', '.join(d[:3])}" for p, d in FEW_SHOT_EXAMPLES[:2])
    user = (
        f"List {n} different visible defects that an inspector could see on a photo of a {name}{about}. "
        "Each item is a short noun phrase of one to five words, lowercase, without an article, "
        "specific to this product (what breaks, what is missing, what is contaminated or deformed). "
        f"Examples for other products: {examples}. "
        'Answer with exactly this JSON shape: {"defects": ["...", "..."]}'
    )
    return [{"role": "system", "content": DEFECTS_SYSTEM}, {"role": "user", "content": user}]


_ENSEMBLE_STATE = {
    "normal": "a flawless, undamaged, clean object or surface that passes inspection",
    "abnormal": "a damaged or defective object or surface (a crack, scratch, hole, stain, missing part, "
    "deformation, contamination or similar) that fails inspection",
}


def ensemble_messages(kind: str, n: int, batch: int) -> list[dict[str, str]]:
    """Chat messages asking for ``n`` object-agnostic caption sentences (FADE's ensemble)."""
    if kind not in _ENSEMBLE_STATE:
        raise ValueError(f"ensemble kind must be 'normal' or 'abnormal', got {kind!r}")
    user = (
        f"Write {n} different short sentences, each a caption of a photo showing {_ENSEMBLE_STATE[kind]}. "
        "Do not name a specific product; use generic words such as object, part, surface, material, "
        "component, item. Vary the wording, the part and the kind of photo (close-up, cropped, "
        f"inspection photo). This is batch {batch}: avoid the most obvious sentences. "
        'Answer with exactly this JSON shape: {"sentences": ["...", "..."]}'
    )
    return [{"role": "system", "content": DEFECTS_SYSTEM}, {"role": "user", "content": user}]
