"""PathResolver gives os.path.realpath's answer for every kind of path a run meets."""

import os

import pytest

from anomalens.paths import PathResolver


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """real/a.png, real/sub/b.png; a folder link, a file link, a link to a link, a dangling link."""
    real = tmp_path / "real"
    (real / "sub").mkdir(parents=True)
    (real / "a.png").write_bytes(b"a")
    (real / "sub" / "b.png").write_bytes(b"b")
    (tmp_path / "folder_link").symlink_to(real / "sub")
    (tmp_path / "file_link.png").symlink_to(real / "a.png")
    (tmp_path / "link_to_link.png").symlink_to(tmp_path / "file_link.png")
    (tmp_path / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


CASES = [
    "real/a.png",
    "./real/a.png",
    "real/sub/../a.png",
    "folder_link/b.png",
    "folder_link/../a.png",  # realpath follows the link before "..": real/a.png
    "file_link.png",
    "link_to_link.png",
    "dangling.png",
    "real/missing.png",
    "a.png",
    "real/sub/..",
    "real/.",
    "real/",
]


@pytest.mark.parametrize("given", CASES)
def test_same_as_realpath(tree, given):
    resolve = PathResolver()
    assert resolve(given) == os.path.realpath(given)
    assert resolve(tree / given) == os.path.realpath(tree / given)  # absolute too
    assert resolve(given) == os.path.realpath(given)  # the folder now comes from its cache


def test_folder_link_is_followed_before_dot_dot(tree):
    assert PathResolver()("folder_link/../a.png") == str(tree / "real" / "a.png")


def test_many_files_of_one_folder_resolve_it_once(tree, monkeypatch):
    calls = []
    real = os.path.realpath
    monkeypatch.setattr(os.path, "realpath", lambda p, **kw: calls.append(p) or real(p, **kw))
    resolve = PathResolver()
    names = [f"folder_link/img{i}.png" for i in range(50)]
    assert resolve.all(names) == [str(tree / "real" / "sub" / f"img{i}.png") for i in range(50)]
    assert calls == ["folder_link"]
