"""Detection methods, chosen by name."""

from .base import METHODS, Method, MethodOutput, create_method, register_method


def available_methods() -> list[str]:
    # Importing the modules registers them; optional ones register only if importable.
    from . import musc, patchknn  # noqa: F401

    for module in ("fade", "winclip", "filo"):
        try:
            __import__(f"{__name__}.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{module}":
                raise
    return sorted(METHODS)


__all__ = ["METHODS", "Method", "MethodOutput", "available_methods", "create_method", "register_method"]
