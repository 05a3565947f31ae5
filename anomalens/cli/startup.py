"""Ctrl-C while torch loads is held until the import ends, so it ends as one line and exit 130.

A SIGINT that arrives while torch (or ONNX Runtime) initialises raises KeyboardInterrupt wherever the
interpreter is: inside a pybind11 callback the C++ side cannot pass it on and aborts the process
("terminate called after throwing an instance of 'pybind11::error_already_set'", exit -6), inside a
class body Python turns it into a RuntimeError with a traceback. So for the import SIGINT's handler
only notes the Ctrl-C, and KeyboardInterrupt is raised once the import is done, in our code, where
the command line's handlers catch it (`app.py`). (Python runs signal handlers in the main thread
whichever thread the signal reached, so a signal mask would not do: threads started earlier do not
block it.) A start-up Ctrl-C then costs the rest of the import (about a second).
"""

from __future__ import annotations

import importlib
import importlib.util
import signal
import sys
import threading

# imported with Ctrl-C held, in this order, when installed
EXTENSION_MODULES = ("torch", "onnxruntime")


def import_extensions_holding_ctrl_c(modules: tuple[str, ...] = EXTENSION_MODULES) -> None:
    """Import `modules` (those installed and not yet imported); a Ctrl-C meanwhile raises KeyboardInterrupt
    here, after the imports. Outside the main thread (no signal handlers there), or where SIGINT is ignored,
    they are just imported."""
    ignored = signal.getsignal(signal.SIGINT) in (signal.SIG_IGN, None)  # e.g. a background job: stays so
    if ignored or threading.current_thread() is not threading.main_thread():
        _import_installed(modules)
        return
    pressed = []
    previous = signal.signal(signal.SIGINT, lambda *_: pressed.append(True))
    try:
        _import_installed(modules)
    finally:
        signal.signal(signal.SIGINT, previous)
    if pressed:
        raise KeyboardInterrupt


def _import_installed(modules: tuple[str, ...]) -> None:
    for name in modules:
        if name not in sys.modules and importlib.util.find_spec(name) is not None:
            importlib.import_module(name)
