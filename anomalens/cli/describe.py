"""`anomalens describe`: defect phrases per category, or a FADE-style sentence ensemble, from a language model.

The work is in `anomalens.describe`; this module parses the options and prints the results
(lists on stdout, what the cleaning filter dropped and timings on stderr).
"""

from __future__ import annotations

from pathlib import Path

import typer

from .app import app, echo, fail


@app.command()
def describe(
    categories: list[str] = typer.Argument(None, help="Product names, e.g. screw 'ball screw drive'."),
    n: int | None = typer.Option(None, "--n", min=1, help="Phrases per category (default 8) or sentences (400)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Vocabulary JSON (default vocabulary.json) or, with --ensemble, ensemble.json."
    ),
    llm: str = typer.Option(
        "embedded",
        "--llm",
        help="'embedded' (offline Gemma 3 270M, the 'llm' extra of anomalens; de-quantised "
        "weights cached in "
        "$ANOMALENS_LLM_CACHE, default ~/.cache/anomalens/llm) or an OpenAI-compatible URL such as "
        "http://localhost:8080/v1 (key, if needed, in $ANOMALENS_LLM_API_KEY).",
    ),
    llm_model: str | None = typer.Option(None, "--llm-model", help="Model name sent to the endpoint."),
    context: str | None = typer.Option(
        None, "--context", help="What the product is, e.g. 'steel part of a linear axis'."
    ),
    ensemble: str | None = typer.Option(
        None, "--ensemble", help="normal | abnormal: write FADE-style object-agnostic sentences (endpoint only)."
    ),
    merge: bool = typer.Option(False, "--merge", help="Add to an existing --out file, keeping all its entries."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing --out file."),
    seed: int = typer.Option(0, "--seed", help="Sampling seed (the embedded model is deterministic per seed)."),
    timeout: float = typer.Option(60.0, "--timeout", min=0.1, help="Seconds per endpoint request."),
) -> None:
    """Write defect phrases per category (the vocabulary filo reads) or a sentence ensemble (--prompts).

    Every answer goes through a cleaning filter (lowercase; numbering, punctuation, the category
    name alone, duplicates, near-duplicates, long or non-defect items dropped); what was dropped
    is printed with the reason. An existing --out is never replaced without --overwrite.
    """
    from .. import describe as d

    if merge and overwrite:
        fail("--merge and --overwrite exclude each other")
    if ensemble is not None and ensemble not in ("normal", "abnormal"):
        fail(f"--ensemble must be 'normal' or 'abnormal', got {ensemble!r}")
    if ensemble and categories:
        fail("--ensemble writes object-agnostic sentences: give no categories")
    if not ensemble and not categories:
        fail("give one or more categories (or --ensemble normal|abnormal)")
    if ensemble and llm == "embedded":
        fail(
            "the embedded Gemma 3 270M is too small to write hundreds of varied sentences (it repeats a few "
            "phrasings); use an endpoint: --llm http://host:port/v1"
        )
    target = Path(out or ("ensemble.json" if ensemble else "vocabulary.json"))
    if target.exists() and not (merge or overwrite):
        fail(f"{target} already exists: pass --merge to add to it or --overwrite to replace it")
    backend = d.make_backend(llm, llm_model, seed=seed, timeout=timeout, log=echo)
    if ensemble:
        _write_ensemble(backend, ensemble, n or 400, target, merge, overwrite, llm)
    else:
        _write_vocabulary(backend, categories, n or 8, context, target, merge, overwrite, f"--llm {llm}, seed {seed}")


def _write_ensemble(backend, kind: str, n: int, target: Path, merge: bool, overwrite: bool, llm: str) -> None:
    from .. import describe as d
    from ..text.prompts import MVTEC_CATEGORIES, VISA_CATEGORIES, clean_class_name

    # Dataset category names would make the "object-agnostic" sentences object-specific.
    names = {clean_class_name(c) for c in (*MVTEC_CATEGORIES, *VISA_CATEGORIES)}
    sentences, dropped = d.generate_sentences(backend, kind, n, forbidden_words=names, log=echo)
    for item, why in dropped:
        echo(f"  dropped {item!r} ({why})")
    d.write_ensemble(target, kind, sentences, merge, overwrite, source=f"anomalens describe --llm {llm}")
    typer.echo(f"wrote {len(sentences)} {kind} sentences to {target}")


def _write_vocabulary(
    backend, categories: list[str], n: int, context: str | None, target: Path, merge: bool, overwrite: bool, how: str
) -> None:
    """Describe each category (a failure is reported and the others go on), then write them all."""
    from .. import describe as d

    existing = d.vocabulary_entries(target) if merge else {}
    generated: dict[str, list[str]] = {}
    for category in categories:
        try:
            result = d.describe_category(backend, category, n, context, existing=existing.get(category, ()))
        except d.DescribeError as err:
            echo(f"error: {category}: {err}")
            continue
        typer.echo(f"{category}: {'; '.join(result.kept) or '(nothing usable)'}")
        for item, why in result.dropped:
            echo(f"  dropped {item!r} ({why})")
        echo(f"  {result.seconds:.1f} s, {result.attempts} request(s)")
        if result.kept:
            generated[category] = result.kept
    if generated:
        source = f"anomalens describe {how} ({backend.model_name})"
        d.write_vocabulary(target, generated, merge, overwrite, source=source)
        typer.echo(f"wrote {len(generated)} categories to {target}")
    if len(generated) < len(categories):
        raise typer.Exit(1)
