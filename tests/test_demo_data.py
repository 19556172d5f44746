from __future__ import annotations

import shutil

import pytest

from tlpipe.data.demo import DEMO_FILES, DemoDataError, fetch_demo_data, tree_digest


def test_local_copy_is_verified_and_installed_whole(demo_root, tmp_path):
    destination = fetch_demo_data(tmp_path / "data" / "demo", source=demo_root)
    assert tree_digest(destination)[1] == DEMO_FILES
    assert [p.name for p in (tmp_path / "data").iterdir()] == ["demo"]  # no scratch left
    assert fetch_demo_data(destination) == destination  # already there: verified, kept


def test_an_altered_copy_is_refused_and_nothing_is_installed(demo_root, tmp_path):
    altered = tmp_path / "altered"
    shutil.copytree(demo_root, altered)
    (altered / "train" / "ants" / "imageNotFound.gif").unlink()
    with pytest.raises(DemoDataError, match="does not match"):
        fetch_demo_data(tmp_path / "data" / "demo", source=altered)
    assert not (tmp_path / "data" / "demo").exists()
