"""The `anomalens` command line: one module per command, all registered on `app`.

`app` (in `app.py`) holds the global options and maps errors to exit codes; importing this
package imports every command module so that each registers itself. Heavy modules (torch,
open_clip, the methods) are imported inside the commands, so `anomalens --help` is fast.
"""

from __future__ import annotations

import sys

try:
    from . import benchmark, data, demo, describe, detect, evaluate, export, fit, methods, region, serve, train  # noqa: F401  (register the commands)
    from .app import app
except KeyboardInterrupt:  # Ctrl-C while the command line loads: one line, no traceback
    sys.stderr.write("interrupted (Ctrl-C)\n")
    raise SystemExit(130) from None


def main() -> None:  # pragma: no cover
    sys.exit(app())


__all__ = ["app", "main"]
