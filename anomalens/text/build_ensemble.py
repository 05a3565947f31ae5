"""Write ``data/fade_ensemble.json``, the object-agnostic sentence ensemble used by FADE.

Each hand-written description (a generic subject plus its condition, e.g. "a metal surface
with a deep scratch") is placed in each of a few photo-caption frames; a short list of
free-standing sentences is added; the result is deduplicated case- and
whitespace-insensitively. The output is deterministic, and a test checks that it matches
the committed file byte for byte.

    python -m anomalens.text.build_ensemble            # rewrite the packaged file
    python -m anomalens.text.build_ensemble --check    # exit 1 if it is out of date
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from anomalens.text.ensemble_phrases import (
    ANOMALOUS_DESCRIPTIONS,
    ANOMALOUS_SENTENCES,
    FRAMES,
    NORMAL_DESCRIPTIONS,
    NORMAL_SENTENCES,
)
from anomalens.text.prompts import dedupe

OUTPUT = Path(__file__).resolve().parent / "data" / "fade_ensemble.json"

SOURCE = (
    "anomalens: hand-written object-agnostic descriptions, each placed in "
    "four photo-caption frames, plus free-standing sentences; built by anomalens/text/build_ensemble.py"
)

def build() -> dict:
    """The ensemble as a JSON-ready dict."""
    anomalous = dedupe(
        [f.format(d) for d in ANOMALOUS_DESCRIPTIONS for f in FRAMES] + list(ANOMALOUS_SENTENCES)
    )
    normal = dedupe([f.format(d) for d in NORMAL_DESCRIPTIONS for f in FRAMES] + list(NORMAL_SENTENCES))
    return {"version": 1, "source": SOURCE, "normal": normal, "anomalous": anomalous}


def render() -> str:
    """The exact text of the data file."""
    return json.dumps(build(), indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only check that the file is up to date")
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        current = args.output.read_text(encoding="utf-8") if args.output.exists() else ""
        if current != text:
            print(f"{args.output} is out of date; run python -m anomalens.text.build_ensemble")
            return 1
        return 0
    args.output.write_text(text, encoding="utf-8")
    data = build()
    print(f"wrote {args.output}: {len(data['normal'])} normal, {len(data['anomalous'])} anomalous")
    return 0


if __name__ == "__main__":
    sys.exit(main())
