"""What the one-change screens share: each changes one piece of anomalens in its own process, then runs the
`anomalens` command line with the arguments after `--` (fused_rule_screen, fused_partner_screen,
fused_combination_screen, lone_reference_levels)."""

from __future__ import annotations

import sys


def split_arguments(usage: str, own: int | None = None) -> tuple[list[str], list[str]]:
    """sys.argv -> (the screen's own arguments, anomalens's after `--`); exits with `usage` when there is no
    `--`, or when `own` is given and the screen's arguments are not that many."""
    args = sys.argv[1:]
    if "--" not in args or (own is not None and args.index("--") != own):
        raise SystemExit(usage)
    split = args.index("--")
    return args[:split], args[split + 1 :]


def run_anomalens(arguments: list[str]) -> None:
    """The anomalens CLI on `arguments`, imported only now: after the screen's change."""
    from anomalens.cli import app

    sys.argv = ["anomalens", *arguments]
    app()


def run_replaced(usage: str, module, name: str, replacement) -> None:
    """For a screen without arguments of its own: `module.name` replaced (looked up at call time by anomalens),
    then the CLI on the arguments after `--`."""
    _, arguments = split_arguments(usage, own=0)
    setattr(module, name, replacement)
    run_anomalens(arguments)
