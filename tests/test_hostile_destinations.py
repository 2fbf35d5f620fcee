"""Destinations and permissions: `convert` into a bad place fails first and in one line; what it writes others can read.

`orbax_dir.writing` checks the destination before any conversion (it must not exist, its
folder must be creatable and writable, no other process may be writing it), removes the
staging directories a killed writer of the same destination left, refuses a concurrent
writer in one line, and gives the result the user's umask instead of `mkdtemp`'s 0700.
"""

from __future__ import annotations

import fcntl
import os
import stat

import pytest

import jaxinterp as ji
from jaxinterp.converters import orbax_dir
from tests.hostile import refused, within


@pytest.mark.parametrize("where", ["under_a_file", "existing", "proc"])
def test_a_bad_destination_is_named_before_the_source_is_read(tmp_path, where):
    (tmp_path / "file").write_text("x")
    (tmp_path / "existing").mkdir()
    dst = {"under_a_file": tmp_path / "file" / "out", "existing": tmp_path / "existing",
           "proc": "/proc/jaxinterp-no-such-folder/out"}[where]
    # the source does not exist: an error about the destination proves it was checked first
    message = refused(lambda: ji.convert(str(tmp_path / "no-such-checkpoint"), str(dst), progress=False), str(dst))
    assert "no-such-checkpoint" not in message
    assert sorted(os.listdir(tmp_path)) == ["existing", "file"]  # nothing left behind


def test_a_concurrent_writer_is_refused_in_one_line(tmp_path, tiny_checkpoint):
    dst = tmp_path / "out"
    with open(tmp_path / ".out.convert.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # what a live writer of `out` holds
        refused(lambda: ji.convert(tiny_checkpoint("smol")[0], str(dst), progress=False),
                 str(dst), "another process is writing it now")
    assert not dst.exists()


def test_a_destination_written_meanwhile_is_reported_and_the_staging_removed(tmp_path):
    dst = tmp_path / "out"

    def race():
        with orbax_dir.writing(dst) as staging:
            (dst / "theirs").mkdir(parents=True)  # another writer renamed its result into place first
            (open(os.path.join(staging, "mine"), "w")).close()

    refused(race, str(dst), "written by another process meanwhile")
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(dst) == ["theirs"]


def test_a_killed_writers_staging_directory_is_removed_by_the_next_convert(tmp_path, tiny_checkpoint):
    stale = tmp_path / ".out.partial-killed"
    (stale / "params").mkdir(parents=True)
    with open(stale / "params" / "big", "wb") as f:
        f.truncate(1 << 20)
    unrelated = tmp_path / ".other.partial-keep"
    unrelated.mkdir()
    with within(60):
        ji.convert(tiny_checkpoint("smol")[0], str(tmp_path / "out"), progress=False)
    assert sorted(os.listdir(tmp_path)) == [".other.partial-keep", "out"]


@pytest.mark.parametrize("umask, folder_mode, file_mode", [(0o022, 0o755, 0o644), (0o077, 0o700, 0o600)])
def test_converted_directories_follow_the_users_umask(tmp_path, tiny_checkpoint, umask, folder_mode, file_mode):
    previous = os.umask(umask)
    try:
        with within(60):
            ji.convert(tiny_checkpoint("smol")[0], str(tmp_path / "out"), progress=False)
    finally:
        os.umask(previous)
    modes = {os.path.relpath(os.path.join(d, name), tmp_path): stat.S_IMODE(os.stat(os.path.join(d, name)).st_mode)
             for d, dirs, files in os.walk(tmp_path) for name in dirs + files}
    assert modes["out"] == folder_mode
    assert modes[os.path.join("out", orbax_dir.MANIFEST)] == file_mode
    assert all(mode in (folder_mode, file_mode) for mode in modes.values()), modes


def test_a_report_follows_the_users_umask(tmp_path):
    from jaxinterp.viz.report import write_atomic

    previous = os.umask(0o022)
    try:
        write_atomic(tmp_path / "report.html", "<p>hi</p>")
    finally:
        os.umask(previous)
    assert stat.S_IMODE(os.stat(tmp_path / "report.html").st_mode) == 0o644
