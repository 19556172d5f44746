from __future__ import annotations

import os

import pandas as pd
import pytest

from tests.images import write_class_folder
from tlpipe.config import DataConfig, SplitConfig
from tlpipe.data.manifest import DataLayoutError, build_manifest, save_manifest

DATA, SPLIT = DataConfig(), SplitConfig(test_fraction=0.25, val_fraction=0.25)


def _build(root, split=SPLIT):
    return build_manifest(root, DATA, split, max_pixels=10**8, workers=2)


def test_rows_describe_each_file(tmp_path):
    write_class_folder(tmp_path, "cats", 3)
    frame = _build(tmp_path)
    row = frame.iloc[0]
    assert row["path"].startswith("cats/") and row["label"] == "cats"
    assert len(row["sha256"]) == 64 and row["bytes"] > 0
    assert (row["format"], row["width"], row["height"], row["mode"]) == ("PNG", 96, 64, "RGB")
    assert bool(row["decodable"]) and bool(row["inside_root"])


def test_adding_images_never_moves_an_old_image_to_another_split(tmp_path):
    write_class_folder(tmp_path, "cats", 20)
    write_class_folder(tmp_path, "dogs", 20)
    before = _build(tmp_path).set_index("path")["split"]
    write_class_folder(tmp_path, "cats", 15, start=100)
    after = _build(tmp_path).set_index("path")["split"]
    assert after.loc[before.index].equals(before)
    assert set(before) == {"train", "val", "test"}


def test_given_val_becomes_test_and_validation_is_carved_from_train(tmp_path):
    write_class_folder(tmp_path / "train", "cats", 30)
    write_class_folder(tmp_path / "train", "dogs", 30)
    write_class_folder(tmp_path / "val", "cats", 5, start=500)
    write_class_folder(tmp_path / "val", "dogs", 5, start=500)
    frame = _build(tmp_path)
    assert set(frame.loc[frame["source_split"] == "val", "split"]) == {"test"}
    assert set(frame.loc[frame["source_split"] == "train", "split"]) == {"train", "val"}


def test_junk_is_ignored_and_empty_classes_are_remembered(tmp_path):
    write_class_folder(tmp_path, "cats", 3)
    (tmp_path / "dogs").mkdir()
    (tmp_path / "cats" / ".DS_Store").write_bytes(b"\0\0junk")
    (tmp_path / "cats" / "Thumbs.db").write_bytes(b"junk")
    frame = _build(tmp_path)
    assert len(frame) == 3
    assert frame.attrs["classes"] == ["cats", "dogs"]


def test_symlink_leading_outside_the_data_folder_is_flagged(tmp_path):
    outside = write_class_folder(tmp_path / "elsewhere", "x", 1)[0]
    data = tmp_path / "data"
    write_class_folder(data, "cats", 2)
    os.symlink(outside, data / "cats" / "link.png")
    frame = _build(data).set_index("path")
    assert not frame.loc["cats/link.png", "inside_root"]
    assert frame.drop("cats/link.png")["inside_root"].all()


def test_missing_folder_says_what_to_do(tmp_path):
    with pytest.raises(DataLayoutError, match="tlpipe demo-data"):
        _build(tmp_path / "nope")


def test_a_scan_state_changed_on_disk_is_not_trusted(tmp_path):
    """The state remembers each file's hash; one flipped there would give a file another
    image's split. A state that no longer matches its digest costs a full read, nothing else."""
    data, state = tmp_path / "data", tmp_path / "state"
    write_class_folder(data, "cats", 12)
    write_class_folder(data, "dogs", 12)
    first = build_manifest(data, DATA, SPLIT, max_pixels=10**8, workers=2, state_dir=state)
    [state_file] = state.glob("*.parquet")
    remembered = pd.read_parquet(state_file)
    remembered.loc[0, "sha256"] = "0" * 64  # attrs, digest included, kept as written
    remembered.to_parquet(state_file, index=False)
    again = build_manifest(data, DATA, SPLIT, max_pixels=10**8, workers=2, state_dir=state)
    assert again.attrs["files_read"] == 24 and again.equals(first)


def test_files_that_change_while_they_are_read_stop_the_scan_and_record_nothing(
        tmp_path, monkeypatch):
    """A copy still writing into the folder: the manifest (and the data version made from it)
    must describe one state of the folder, not a mix."""
    from tlpipe.data import manifest

    data, state = tmp_path / "data", tmp_path / "state"
    write_class_folder(data, "cats", 12)
    write_class_folder(data, "dogs", 12)
    growing = sorted((data / "dogs").iterdir())[3]
    describe = manifest._describe_file

    def describe_while_a_copy_writes(path, root, max_pixels):
        if path == growing:  # the writer appends just after this file was read
            facts = describe(path, root, max_pixels)
            with growing.open("ab") as handle:
                handle.write(b"more bytes")
            return facts
        return describe(path, root, max_pixels)

    monkeypatch.setattr(manifest, "_describe_file", describe_while_a_copy_writes)
    with pytest.raises(manifest.DataChangedError, match=rf"1 file\(s\) changed while they were "
                                                       rf"read \(first: dogs/{growing.name}\)"):
        build_manifest(data, DATA, SPLIT, max_pixels=10**8, workers=2, state_dir=state)
    assert not list(state.glob("*.parquet"))  # nothing recorded
    monkeypatch.undo()
    assert build_manifest(data, DATA, SPLIT, max_pixels=10**8, workers=2,
                          state_dir=state).attrs["files_read"] == 24  # still: it scans


def test_a_rescan_reads_only_new_and_changed_files(tmp_path):
    data, state = tmp_path / "data", tmp_path / "state"
    write_class_folder(data, "cats", 12)
    write_class_folder(data, "dogs", 12)

    def scan():
        return build_manifest(data, DATA, SPLIT, max_pixels=10**8, workers=2, state_dir=state)

    first = scan()
    assert first.attrs["files_read"] == 24
    again = scan()
    assert again.attrs["files_read"] == 0  # stat only: same path, size, mtime and inode
    assert again.equals(first) and again.attrs["classes"] == ["cats", "dogs"]
    assert again.equals(_build(data))  # what a full scan says
    # A warm scan saves the very bytes a cold one does: DVC sees no change downstream.
    assert save_manifest(again, tmp_path / "warm.parquet").read_bytes() == save_manifest(
        first, tmp_path / "cold.parquet").read_bytes()

    changed = data / first["path"].iloc[0]
    changed.write_bytes((data / first["path"].iloc[1]).read_bytes())  # another image's bytes
    write_class_folder(data, "dogs", 2, start=100)
    (data / first["path"].iloc[5]).unlink()
    third = scan()
    assert third.attrs["files_read"] == 3 and len(third) == 25
    assert third.equals(_build(data))
    assert third.set_index("path").loc[first["path"].iloc[0], "sha256"] == first["sha256"].iloc[1]
