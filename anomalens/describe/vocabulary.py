"""Reading and writing the two text files the methods read, in exactly their documented formats.

* defect vocabulary (``filo``'s ``vocabulary`` setting, format of ``anomalens/text/data/defects.json``):
  ``{"version": 1, "categories": {name: [phrases]}, "generic": [phrases]}``
* sentence ensemble (``--prompts``, format of ``fade_ensemble.json``):
  ``{"version": 1, "source": "...", "normal": [...], "anomalous": [...]}``

An existing file is never replaced without ``overwrite``; with ``merge`` the new entries are
appended to the user's (their entries, order and any other keys are kept). Files are written
to a temporary name and renamed, so an interrupted write leaves the old file intact.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from ..text.prompts import dedupe, load_defect_vocabulary, load_ensemble
from .errors import DescribeError

#: The ensemble key for each ``--ensemble`` kind (the file says "anomalous").
ENSEMBLE_KEYS = {"normal": "normal", "abnormal": "anomalous"}


def _write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, ensure_ascii=False)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _existing(path: Path, merge: bool, overwrite: bool, check) -> dict | None:
    """The parsed file to merge into, None to start afresh; refuse to clobber a file silently."""
    if not path.exists():
        return None
    if overwrite:
        return None
    if not merge:
        raise DescribeError(f"{path} already exists: pass --merge to add to it or --overwrite to replace it")
    try:
        check(path)  # the same validation the methods apply, so we never merge into a broken file
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, OSError) as err:
        raise DescribeError(f"cannot merge into {path}: {err}") from err


def vocabulary_entries(path: Path | None) -> dict[str, list[str]]:
    """The categories of a vocabulary file (the packaged one for None), {} if ``path`` does not exist."""
    if path is not None and not Path(path).exists():
        return {}
    try:
        return load_defect_vocabulary(path).categories
    except (ValueError, OSError) as err:
        raise DescribeError(str(err)) from err


def write_vocabulary(
    path: Path, generated: dict[str, list[str]], merge: bool = False, overwrite: bool = False, source: str = ""
) -> dict:
    """Write ``generated`` (category -> phrases) as a defect vocabulary; returns what was written.

    A new file gets the packaged ``generic`` list (the format requires one). With ``merge``,
    the user's phrases come first and only new phrases (compared ignoring case and spacing)
    are appended; categories not generated are kept as they are.
    """
    path = Path(path)
    data = _existing(path, merge, overwrite, load_defect_vocabulary)
    if data is None:
        data = {"version": 1, "categories": {}, "generic": load_defect_vocabulary().generic}
    if source:
        data["source"] = source if "source" not in data else f"{data['source']}; {source}"
    categories = data.setdefault("categories", {})
    for name, phrases in generated.items():
        categories[name] = dedupe([*categories.get(name, []), *phrases])
    _write_json(path, data)
    try:  # read back with the reader the methods use
        load_defect_vocabulary(path)
    except ValueError as err:  # pragma: no cover - would be a bug here, not bad input
        raise DescribeError(f"wrote an unreadable vocabulary to {path}: {err}") from err
    return data


def write_ensemble(
    path: Path, kind: str, sentences: list[str], merge: bool = False, overwrite: bool = False, source: str = ""
) -> dict:
    """Write ``sentences`` as the ``normal`` or ``anomalous`` side of a ``--prompts`` ensemble file.

    The format needs both sides; a new file takes the other side from the packaged ensemble
    (said in ``source``), so it can be used at once and completed by a second run with
    ``--merge``. Merging appends to the chosen side without duplicates.
    """
    if kind not in ENSEMBLE_KEYS:
        raise DescribeError(f"--ensemble must be 'normal' or 'abnormal', got {kind!r}")
    key = ENSEMBLE_KEYS[kind]
    path = Path(path)
    data = _existing(path, merge, overwrite, load_ensemble)
    if data is None:
        packaged = load_ensemble()
        other = "anomalous" if key == "normal" else "normal"
        data = {
            "version": 1,
            "source": f"{other}: packaged anomalens ensemble",
            "normal": packaged.normal if other == "normal" else [],
            "anomalous": packaged.anomalous if other == "anomalous" else [],
        }
    if source:
        data["source"] = f"{data.get('source', '')}; {key}: {source}".lstrip("; ")
    data[key] = dedupe([*data.get(key, []), *sentences])
    _write_json(path, data)
    return data
