"""Detection methods, chosen by name."""

from .base import METHODS, Method, MethodOutput, create_method, register_method


def load_method(name: str) -> type[Method] | None:
    """The method registered as `name`, importing its own module first: a run of `patchknn`
    does not import the CLIP stack of the other methods (open_clip: ~4 s of start-up)."""
    if name not in METHODS and name.isidentifier():
        try:
            __import__(f"{__name__}.{name}")
        except ModuleNotFoundError as err:
            if err.name != f"{__name__}.{name}":
                raise
    if name not in METHODS:
        available_methods()  # a method registered under another name than its module's
    return METHODS.get(name)


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


__all__ = ["METHODS", "Method", "MethodOutput", "available_methods", "create_method", "load_method", "register_method"]
