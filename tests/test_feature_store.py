"""The chunked feature store: bounded file count, one-pass reads, fsspec URLs, atomic appends
under SIGKILL and concurrent writers in real processes."""

from __future__ import annotations

import hashlib
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tlpipe.errors import SettingsError
from tlpipe.params_file import parse_params
from tlpipe.paths import feature_store
from tlpipe.vectors.store import (
    CORRUPT_SUFFIX,
    TEMPORARY_SUFFIX,
    CorruptChunk,
    FeatureStore,
    StoreWriteError,
)

DIM = 16


def key_of(i: int) -> str:
    return hashlib.sha256(str(i).encode()).hexdigest()


def vector_of(i: int) -> np.ndarray:
    return np.random.default_rng(i).standard_normal(DIM).astype(np.float32)


def write(store: FeatureStore, ids: range) -> None:
    with store.writer() as writer:
        writer.add([key_of(i) for i in ids], np.stack([vector_of(i) for i in ids]))


def test_vectors_go_into_chunk_files_and_a_split_is_read_in_one_pass(tmp_path):
    store = FeatureStore(str(tmp_path / "store"), chunk_vectors=1000)
    write(store, range(2500))
    chunks = store.chunks()
    assert len(chunks) == 3  # 1000 + 1000 + 500, not 2500 files
    assert sorted(p.name for p in (tmp_path / "store").rglob("*") if p.is_file()) == sorted(
        c.rsplit("/", 1)[1] for c in chunks)
    wanted = [2499, 3, 1500, 999, 1000, 0]
    assert np.array_equal(store.read([key_of(i) for i in wanted]),
                          np.stack([vector_of(i) for i in wanted]))
    assert len(store) == 2500 and key_of(7) in store and key_of(2500) not in store
    with pytest.raises(KeyError, match=r"1 of 2 vectors are not stored.*features stage"):
        store.read([key_of(1), key_of(9999)])


@pytest.mark.parametrize("url", ["memory://tlpipe-test/features", "file://{tmp}/features"])
def test_the_store_can_live_at_any_fsspec_url(tmp_path, url):
    store = FeatureStore(url.format(tmp=tmp_path), chunk_vectors=64)
    write(store, range(100))
    again = FeatureStore(url.format(tmp=tmp_path), chunk_vectors=64)  # another process's view
    assert len(again.chunks()) == 2
    assert np.array_equal(again.read([key_of(99), key_of(0)]),
                          np.stack([vector_of(99), vector_of(0)]))


@pytest.mark.parametrize("url", ["xyz://nowhere/features", "s3://bucket/features"])
def test_a_store_url_nothing_here_can_open_names_the_setting(tmp_path, url):
    with pytest.raises(SettingsError, match=r"features.store: '[a-z0-9]+://.*(Protocol not "
                                            r"known|s3fs)"):
        feature_store(parse_params({"features": {"store": url}}), tmp_path)


def test_compaction_merges_the_small_chunks_of_many_small_runs(tmp_path):
    store = FeatureStore(str(tmp_path), chunk_vectors=100)
    for start in range(0, 50, 10):  # five runs that each added ten images
        write(store, range(start, start + 10))
    write(store, range(45, 55))  # a run that recomputed five views another run had stored
    assert len(store.chunks()) == 6
    assert store.compact() == 6
    assert len(store.chunks()) == 1 and len(store) == 55
    assert np.array_equal(store.read([key_of(i) for i in range(55)]),
                          np.stack([vector_of(i) for i in range(55)]))
    assert store.compact() == 0  # one chunk: nothing to merge


def test_compaction_keeps_vectors_of_different_widths_apart(tmp_path):
    """Two backbones (or a backbone and the images' pixels) share one store."""
    store = FeatureStore(str(tmp_path), chunk_vectors=100)
    narrow = {f"narrow{i}": np.full(3, i, dtype=np.float32) for i in range(20)}
    for start in (0, 10):
        with store.writer() as writer:
            writer.add(list(narrow)[start:start + 10], list(narrow.values())[start:start + 10])
    for start in range(0, 20, 10):
        write(store, range(start, start + 10))
    assert store.compact() == 4
    assert len(store.chunks()) == 2
    assert np.array_equal(store.read(list(narrow)), np.stack(list(narrow.values())))
    assert np.array_equal(store.read([key_of(i) for i in range(20)]),
                          np.stack([vector_of(i) for i in range(20)]))


class CompactedMidway(FeatureStore):
    """A store whose compaction is overtaken: between its listing of the small chunks and its
    reading of them, another process (a concurrent shard) compacts the same folder."""

    def _read(self, keys, index):
        FeatureStore(self.location, self.chunk_vectors).compact()
        return super()._read(keys, index)


class ListedJustBeforeACompaction(FeatureStore):
    """A store whose first listing goes stale at once: another process compacts the folder
    before any chunk in that listing is read (a shard looking for missing views, say)."""

    overtaken = False

    def chunks(self):
        listing = super().chunks()
        if not self.overtaken:
            self.overtaken = True
            FeatureStore(self.location, self.chunk_vectors).compact()
        return listing


def test_a_listing_made_stale_by_a_compaction_is_made_again(tmp_path):
    write(FeatureStore(str(tmp_path), chunk_vectors=100), range(0, 20))
    write(FeatureStore(str(tmp_path), chunk_vectors=100), range(20, 40))
    store = ListedJustBeforeACompaction(str(tmp_path), chunk_vectors=100)
    assert store.keys() == {key_of(i) for i in range(40)}  # what extraction asks first
    assert store.overtaken and len(store.chunks()) == 1


def test_a_compaction_overtaken_by_another_leaves_the_merge_to_it(tmp_path):
    store = CompactedMidway(str(tmp_path), chunk_vectors=100)
    for start in range(0, 40, 10):
        write(store, range(start, start + 10))
    assert store.compact() == 0  # the other one merged the four chunks; nothing fails
    assert len(store.chunks()) == 1 and len(store) == 40
    assert np.array_equal(FeatureStore(str(tmp_path)).read([key_of(i) for i in range(40)]),
                          np.stack([vector_of(i) for i in range(40)]))


WRITER = textwrap.dedent("""
    import sys, time
    import numpy as np
    import pyarrow.parquet as pq
    from tests.test_feature_store import key_of, vector_of, write
    from tlpipe.vectors.store import FeatureStore

    location, first, count, mode = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    if mode == "pause":  # stop inside the chunk write, after its bytes, before the rename
        original = pq.write_table
        def slow_write(*args, **kwargs):
            original(*args, **kwargs)
            print("writing", flush=True)
            time.sleep(600)
        pq.write_table = slow_write
    store = FeatureStore(location, chunk_vectors=50)
    if mode == "compact":  # small runs, each compacting the folder the others write to
        for start in range(first, first + count, 10):
            write(store, range(start, start + 10))
            store.compact()
            assert store.keys() >= {key_of(i) for i in range(first, start + 10)}
    else:
        for start in range(first, first + count, 50):
            write(store, range(start, start + 50))
""")


def writer_process(location, first: int, count: int, mode: str = "-") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", WRITER, str(location), str(first), str(count),
                             mode], stdout=subprocess.PIPE, text=True)


def test_a_writer_killed_mid_chunk_leaves_no_chunk_a_reader_sees(tmp_path):
    store = FeatureStore(str(tmp_path), chunk_vectors=50)
    write(store, range(50))
    process = writer_process(tmp_path, 1000, 50, mode="pause")
    assert process.stdout.readline() == "writing\n"
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    # The killed chunk's bytes are on disk, under a name no reader lists.
    left = [p for p in (tmp_path / "chunks").iterdir() if p.name.endswith(TEMPORARY_SUFFIX)]
    assert len(left) == 1 and left[0].stat().st_size > 0
    assert len(store.chunks()) == 1 and len(FeatureStore(str(tmp_path))) == 50
    assert key_of(1000) not in store


def test_concurrent_writers_in_several_processes_lose_nothing(tmp_path):
    # Four writers, each with half its views also computed by a neighbour.
    processes = [writer_process(tmp_path, 200 * n, 400) for n in range(4)]
    reader = FeatureStore(str(tmp_path))
    reads = 0
    while any(process.poll() is None for process in processes):
        index = reader.index()  # a reader in the middle of it all sees only whole chunks
        keys = list(index)[:200]
        if keys:
            reader.read(keys)
            reads += 1
        time.sleep(0.05)
    assert [process.returncode for process in processes] == [0, 0, 0, 0] and reads > 0
    assert len(reader) == 1000 and len(reader.chunks()) == 32  # 4 writers x 8 chunks
    assert np.array_equal(reader.read([key_of(i) for i in range(1000)]),
                          np.stack([vector_of(i) for i in range(1000)]))
    assert not [p for p in (tmp_path / "chunks").iterdir() if p.name.endswith(TEMPORARY_SUFFIX)]


def test_processes_compacting_the_folder_they_all_write_to_lose_nothing(tmp_path):
    # Shards on a cluster: each adds small runs and compacts after every one.
    processes = [writer_process(tmp_path, 200 * n, 200, mode="compact") for n in range(4)]
    for process in processes:
        process.wait(timeout=120)
    assert [process.returncode for process in processes] == [0, 0, 0, 0]
    store = FeatureStore(str(tmp_path))
    assert np.array_equal(store.read([key_of(i) for i in range(800)]),
                          np.stack([vector_of(i) for i in range(800)]))
    store.compact()
    sizes = [pq.read_metadata(chunk).num_rows for chunk in store.chunks()]
    assert sum(size < 25 for size in sizes) <= 1, sizes  # the runs of ten were merged


def flip_bit_in_vector(store: FeatureStore, i: int) -> str:
    """Flip one bit of vector ``i`` where it lies in its chunk file (vectors are stored
    uncompressed); the chunk's path."""
    wanted = vector_of(i).tobytes()
    for chunk in store.chunks():
        data = bytearray(Path(chunk).read_bytes())
        at = data.find(wanted)
        if at >= 0:
            data[at + 5] ^= 0x10
            Path(chunk).write_bytes(bytes(data))
            return chunk
    raise AssertionError(f"vector {i} not found in any chunk")


def test_a_flipped_bit_is_caught_the_chunk_set_aside_and_its_vectors_missing(tmp_path):
    store = FeatureStore(str(tmp_path / "store"), chunk_vectors=100)
    write(store, range(300))
    corrupted = flip_bit_in_vector(store, 150)

    reader = FeatureStore(str(tmp_path / "store"), chunk_vectors=100)  # a later run
    with pytest.raises(CorruptChunk, match=rf"{corrupted}.*set aside.*features stage"):
        reader.read([key_of(1), key_of(150)])
    assert (tmp_path / "store" / "chunks" / (corrupted.rsplit("/", 1)[1] + CORRUPT_SUFFIX)
            ).is_file()  # kept for inspection, not deleted
    assert len(reader) == 200 and key_of(150) not in reader and key_of(250) in reader
    assert np.array_equal(reader.read([key_of(250)]), vector_of(250)[None])

    # The features stage's check: every chunk serving the plan, before anything is trusted.
    second = flip_bit_in_vector(reader, 250)
    checker = FeatureStore(str(tmp_path / "store"), chunk_vectors=100)
    reasons = checker.verify([key_of(i) for i in range(300)])
    assert len(reasons) == 1 and second in reasons[0]
    assert len(checker) == 100 and checker.verify([key_of(i) for i in range(100)]) == []


def test_vectors_that_disagree_with_their_digest_are_caught_without_page_checksums(tmp_path):
    """Corruption before the file was written (memory, a copy tool rewriting it): the pages
    are consistent, the digest written with the vectors is not."""
    store = FeatureStore(str(tmp_path / "store"), chunk_vectors=100)
    write(store, range(100))
    [chunk] = store.chunks()
    table = pq.read_table(chunk)
    vectors = np.stack(table.column("vector").to_pylist()).astype(np.float32)
    vectors[7, 3] += 1.0
    rewritten = pa.table({"key": table.column("key"), "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.reshape(-1)), DIM)}).replace_schema_metadata(table.schema.metadata)
    pq.write_table(rewritten, chunk)
    with pytest.raises(CorruptChunk, match="vectors do not match the digest"):
        FeatureStore(str(tmp_path / "store")).read([key_of(7)])

    legacy = FeatureStore(str(tmp_path / "legacy"), chunk_vectors=100)
    legacy.fs.makedirs(legacy.chunks_dir, exist_ok=True)
    pq.write_table(rewritten.replace_schema_metadata(None),
                   f"{legacy.chunks_dir}/0-legacy.parquet")  # written before digests: trusted
    assert np.array_equal(legacy.read([key_of(7)]), vectors[7][None])


def test_a_location_that_cannot_take_a_chunk_is_named_with_what_to_do(tmp_path):
    """Disk full, read-only or not permitted: one message naming the store, not a traceback
    (here a location under a file, which fails the same way for any user, root included)."""
    (tmp_path / "a-file").write_text("not a folder")
    store = FeatureStore(str(tmp_path / "a-file" / "store"), chunk_vectors=10)
    with pytest.raises(StoreWriteError, match=r"a-file/store: cannot write a chunk .*"
                                              r"features\.store"):
        write(store, range(5))
