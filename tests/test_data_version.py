"""The data version at scale: an unchanged folder is not handed to DVC again."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.images import write_class_folder
from tlpipe.data import version as data_version
from tlpipe.data.version import (
    DataVersionError,
    folder_stat,
    pointer_md5,
    record_data_version,
)


@pytest.fixture
def repo(tmp_path):
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-qm", "dvc"], cwd=tmp_path, check=True)
    write_class_folder(tmp_path / "data" / "raw", "moths", 4)
    write_class_folder(tmp_path / "data" / "raw", "wasps", 4)
    return tmp_path


def test_dvc_is_asked_only_when_a_file_changed(repo, monkeypatch):
    asked = []
    real_dvc = data_version._dvc
    monkeypatch.setattr(data_version, "_dvc", lambda project, *args: (
        asked.append(args[0]), real_dvc(project, *args))[1])  # a spy: DVC still runs
    data, state = repo / "data" / "raw", repo / ".cache" / "manifest"

    def version():
        return record_data_version(data, repo, commit=True, push=False, state_dir=state)

    first = version()
    assert asked == ["add"] and first.committed and first.md5 == pointer_md5(
        repo / "data" / "raw.dvc")
    assert version().md5 == first.md5 and asked == ["add"]  # stat and pointer unchanged

    image = next((data / "moths").iterdir())
    os.utime(image, ns=(1, 1))  # touched: same bytes, so the same version, but DVC re-checks
    assert version().md5 == first.md5 and asked == ["add", "add"]

    write_class_folder(data, "wasps", 1, start=50)
    added = version()
    assert asked == ["add"] * 3 and added.md5 != first.md5 and added.committed

    (repo / "data" / "raw.dvc").write_text((repo / "data" / "raw.dvc").read_text().replace(
        added.md5, first.md5))  # a pointer checked out from elsewhere: never trusted blindly
    assert version().md5 == added.md5 and asked == ["add"] * 4
    assert folder_stat(data) != folder_stat(data / "moths")


def test_a_dvc_remote_that_never_answers_stops_the_push_with_a_message(repo):
    """A real DVC HTTP remote whose server takes the connection and never replies."""
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(16)  # the kernel completes the handshakes; nothing ever reads or answers
    address = f"http://127.0.0.1:{silent.getsockname()[1]}/store"
    subprocess.run([sys.executable, "-m", "dvc", "remote", "add", "-d", "silent", address],
                   cwd=repo, check=True)
    started = time.monotonic()
    with silent, pytest.raises(DataVersionError, match=r"dvc push did not finish within 3 s"):
        record_data_version(repo / "data" / "raw", repo, commit=True, push=True,
                            push_timeout_s=3)
    assert time.monotonic() - started < 60
    assert pointer_md5(repo / "data" / "raw.dvc")  # added and committed before the push
