"""The Typer `app`, its global options, and the one place where errors become exit codes.

Commands live in their own modules (`detect.py`, `fit.py`, ...) and register on `app` with
`@app.command()`. They import torch and the methods inside the command function, so that
`anomalens --help` stays fast. A command reports a problem the user can fix by raising an
`anomalens.errors.AnomalensError` (or `fail(...)`); `AnomalensGroup` prints it as one line,
``error: <message>``, and exits with the error's `exit_code` (2). Run outcomes that are not
errors (some images failed: 1; interrupted: 130) are `typer.Exit` codes of the command; Ctrl-C
anywhere else (start-up, loading a model) is one line, ``interrupted (Ctrl-C)``, and exit 130.
"""

from __future__ import annotations

import os
import sys
from typing import Any, NoReturn

import typer
from typer.core import TyperGroup

from ..errors import AnomalensError, UsageError
from .startup import import_extensions_holding_ctrl_c


class AnomalensGroup(TyperGroup):
    """Maps every `AnomalensError` raised by a (sub)command to one red line and its exit code."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except AnomalensError as err:
            typer.secho(f"error: {err}", err=True, fg="red")
            raise typer.Exit(err.exit_code) from None
        except typer.BadParameter as err:  # click's own message, unless the value came from --config
            from .config import config_value_error

            message = config_value_error(err)
            if message is None:
                raise
            typer.secho(f"error: {message}", err=True, fg="red")
            raise typer.Exit(UsageError.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C outside a run loop (loading a model, fitting): no traceback
            _interrupted()

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        name, command, rest = super().resolve_command(ctx, args)
        # the top-level command decides; the global options import them once the threads are set
        ctx.meta.setdefault(HOLD_CTRL_C_IN_IMPORTS, name not in COMMANDS_WITHOUT_TORCH and "--help" not in rest)
        return name, command, rest

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().make_context(*args, **kwargs)
        except KeyboardInterrupt:  # while parsing the command line (typer would exit 130 silently)
            _interrupted()


# commands that run without torch: their start-up stays as fast as it was
COMMANDS_WITHOUT_TORCH = frozenset({"data", "region"})
# ctx.meta key: import torch and ONNX Runtime with Ctrl-C held before the command runs (startup.py)
HOLD_CTRL_C_IN_IMPORTS = "anomalens.hold_ctrl_c_in_imports"


def _interrupted() -> NoReturn:
    typer.echo(INTERRUPTED, err=True)
    raise typer.Exit(130) from None


INTERRUPTED = "interrupted (Ctrl-C)"


class AnomalensTyper(typer.Typer):
    """Ctrl-C while the commands are being assembled (before click runs) is one line, exit 130."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().__call__(*args, **kwargs)
        except KeyboardInterrupt:
            sys.stderr.write(INTERRUPTED + "\n")
            raise SystemExit(130) from None


app = AnomalensTyper(
    cls=AnomalensGroup,
    add_completion=False,
    no_args_is_help=True,
    help="Zero- and few-shot industrial visual anomaly detection (FADE, FiLo, WinCLIP, patch kNN).",
)


def default_threads() -> int:
    """`--threads 0`: every CPU this process may use but one, at least 1.

    torch's default (one thread per core) spends a core that decoding and writing want, and on
    a machine where another process takes a core, its threads wait for each other: 1 thread on
    2 cores degrades gracefully where 2 collapse (README "Speed and memory").
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, cpus - 1)


@app.callback()
def _global_options(
    ctx: typer.Context,
    threads: int = typer.Option(
        0,
        "--threads",
        min=0,
        help="CPU threads for the model. 0: OMP_NUM_THREADS if set, else all CPUs but one (at least 1).",
    ),
    cnn_runtime: str = typer.Option(
        None,
        "--cnn-runtime",
        help="Where the EfficientNet backbone runs on the CPU: auto (ONNX Runtime when installed, "
        "3-4x faster; else PyTorch), torch or onnxruntime. Default: $ANOMALENS_CNN_RUNTIME, else auto.",
    ),
) -> None:
    """Options for every command, given before it: `anomalens --threads 1 detect ...`."""
    if cnn_runtime:
        if cnn_runtime not in ("auto", "torch", "onnxruntime"):
            raise typer.BadParameter(f"{cnn_runtime!r}: use auto, torch or onnxruntime", param_hint="--cnn-runtime")
        os.environ["ANOMALENS_CNN_RUNTIME"] = cnn_runtime  # read by the backbone (backbones/cnn_runtime.py)
    if not threads and "torch" not in sys.modules:  # read by torch when it is imported (just below, or later)
        os.environ.setdefault("OMP_NUM_THREADS", str(default_threads()))
    if ctx.meta.get(HOLD_CTRL_C_IN_IMPORTS):
        import_extensions_holding_ctrl_c()  # before the command imports them: see startup.py
    if threads:
        import torch

        torch.set_num_threads(threads)


def echo(msg: str) -> None:
    """A progress or status line for the user (stderr; stdout is for results)."""
    typer.echo(msg, err=True)


def fail(msg: str) -> NoReturn:
    """End the command with a usage error (printed and mapped to exit code 2 by AnomalensGroup)."""
    raise UsageError(msg)
