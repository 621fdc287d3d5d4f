"""helpers.files.atomic_write_dir: a folder appears whole or not at all, also when two processes build it at once."""

import pytest

from helpers.files import atomic_write_dir


def test_a_folder_is_built_once_and_a_failed_build_leaves_nothing(tmp_path):
    calls = []

    def build(tmp):
        calls.append(tmp)
        (tmp / "a.txt").write_text("x")

    final = atomic_write_dir(tmp_path / "out", build)
    assert (final / "a.txt").read_text() == "x" and atomic_write_dir(final, build) == final and len(calls) == 1

    def broken(tmp):
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_dir(tmp_path / "other", broken)
    assert list(tmp_path.iterdir()) == [final]


def test_a_build_that_another_process_finished_first_returns_its_folder(tmp_path):
    final = tmp_path / "model"

    def build(tmp):  # while this one builds, another process renames its own copy into place
        (tmp / "mine.txt").write_text("mine")
        final.mkdir()
        (final / "theirs.txt").write_text("theirs")

    assert atomic_write_dir(final, build) == final
    assert [p.name for p in final.iterdir()] == ["theirs.txt"] and list(tmp_path.iterdir()) == [final]
