"""Resolved paths of many files, fast: what records and inputs are keyed by (`records.record_key`).

`os.path.realpath` looks up every component of a path, each time: with 30,000 images in one
folder a run spent most of its non-scoring time there (`detect --watch` resolved every file of the
folder several times per poll: 0.5 s per poll at 3,000 images). `PathResolver` resolves each
folder once and then only asks whether the file itself is a symbolic link, with the same result.
"""

from __future__ import annotations

import os


class PathResolver:
    """`os.path.realpath` of file paths, each distinct folder resolved once.

    Equal to `os.path.realpath` for every path: the folder part is resolved as written (so
    `link/../x` follows `link` first, as realpath does) and a file that is itself a symbolic
    link is resolved in full. Keep one for one listing or one run: a folder's resolution is
    remembered for the resolver's lifetime (a symbolic link changed meanwhile is not seen).
    """

    def __init__(self) -> None:
        self._folders: dict[str, str] = {}

    def __call__(self, path: str | os.PathLike) -> str:
        text = os.fspath(path)
        folder, name = os.path.split(text)
        if name in ("", ".", ".."):
            return os.path.realpath(text)
        real_folder = self._folders.get(folder)
        if real_folder is None:
            real_folder = self._folders[folder] = os.path.realpath(folder or os.curdir)
        full = os.path.join(real_folder, name)
        return os.path.realpath(full) if os.path.islink(full) else full

    def all(self, paths) -> list[str]:
        """The resolved path of each of `paths`, in order."""
        return [self(p) for p in paths]
