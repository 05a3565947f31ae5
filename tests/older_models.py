"""Saved model directories as older versions of anomalens wrote them (for the load-compatibility tests)."""

from __future__ import annotations

import json
from pathlib import Path


def forget_settings(model_dir: Path, *names: str) -> None:
    """Drop `names` from a saved model's settings, as a version before those settings existed saved it."""
    config_path = Path(model_dir) / "detector.json"
    config = json.loads(config_path.read_text())
    for name in names:
        del config["settings"][name]
    config_path.write_text(json.dumps(config))
