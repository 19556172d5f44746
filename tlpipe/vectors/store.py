"""The feature store: vectors in chunk files, content-addressed, appended atomically.

Why chunks: one file per vector is 300k files at 100k images with 2 augmented views, which
hurts file systems, backups and every copy to object storage. A chunk is a Parquet file of up
to ``chunk_vectors`` rows (key, vector). Parquet because an object store can read just the key
column of each chunk (the index) with ranged reads, and a float32 column decodes into one
array without a copy per vector.

Why no locks: a chunk is written once under a fresh name and never changed. It is written under
a temporary name and renamed (an object store shows an object only once it is whole), so
writers on any number of processes or hosts never touch each other's files, and a killed
writer leaves at most a temporary file that no reader lists. The same key in two chunks (two
writers computed the same view) holds the same vector; the first chunk by name wins.
Compaction merges small chunks into full ones, writing the new chunk before deleting the old;
of two compactions at once, one merges and the other, finding a chunk gone, leaves it at that.

Why digests: a chunk is trusted on every later run, so a flipped bit would silently change a
model. Each chunk carries the SHA-256 of its keys and of its vectors in its Parquet metadata
(and Parquet page checksums); every read checks them. A chunk that fails is set aside (renamed
``*.corrupt``, never deleted) and its vectors count as missing, so the features stage computes
them again. Chunks written before digests were kept are read as they are.

The location is a folder or any fsspec URL (``s3://bucket/features``, ``gs://...``): a cluster
shares one store.
"""

from __future__ import annotations

import contextlib
import hashlib
import time
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import fsspec
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from tlpipe.errors import TlpipeError
from tlpipe.fsio import CORRUPT_SUFFIX

CHUNK_SUFFIX = ".parquet"
TEMPORARY_SUFFIX = ".tmp"
KEYS_DIGEST, VECTORS_DIGEST = b"tlpipe.keys_sha256", b"tlpipe.vectors_sha256"
# A plan's view 0 of an image is its evaluation preprocessing; views 1..N are augmented.
PLAIN_VIEW = 0


def view_seed(sha256: str, view: int, seed: int) -> int:
    """The augmentation seed of one cached view: the same image (or text) and view always look
    the same."""
    return (int(sha256[:15], 16) ^ (view * 0x9E3779B1) ^ seed) % (2**63)
# A temporary file this old belongs to a writer that died; a live writer renames it in seconds.
STALE_TEMPORARY_S = 24 * 3600
# A listing goes stale when a compaction elsewhere removes a chunk; listing again finds the
# merged chunk, which is written before the old ones go.
RELIST_ATTEMPTS = 3


class CorruptChunk(TlpipeError):
    """A chunk whose content does not match its digests; it has been set aside."""


class StoreWriteError(TlpipeError):
    """The store's location cannot take a new chunk (full, read-only, not permitted)."""


class FeatureStore:
    def __init__(self, location: str, chunk_vectors: int = 1024):
        self.location = str(location)
        self.fs, self.root = fsspec.core.url_to_fs(self.location)
        self.chunk_vectors = chunk_vectors
        self._keys_of: dict[str, list[str]] = {}  # chunks never change: their keys are kept
        self._verified: set[str] = set()  # chunks whose vectors matched their digest
        self.set_aside: list[str] = []  # what this process set aside, and why

    @property
    def chunks_dir(self) -> str:
        return f"{self.root.rstrip('/')}/chunks"

    def chunks(self) -> list[str]:
        """The chunk files, in name order (temporary files of writers not included)."""
        self.fs.invalidate_cache(self.chunks_dir)  # object stores cache listings
        try:
            listing = self.fs.ls(self.chunks_dir, detail=False)
        except FileNotFoundError:
            return []
        return sorted(path for path in listing if path.endswith(CHUNK_SUFFIX))

    def index(self, names: list[str] | None = None) -> dict[str, tuple[str, int]]:
        """Each key's chunk and row, over ``names`` (default: every chunk)."""
        if names is not None:
            return self._index_of(names)
        for _ in range(RELIST_ATTEMPTS - 1):
            try:
                return self._index_of(self.chunks())
            except FileNotFoundError:  # compacted since listed: the merged chunk is listed now
                continue
        return self._index_of(self.chunks())

    def _index_of(self, names: list[str]) -> dict[str, tuple[str, int]]:
        unread = [name for name in names if name not in self._keys_of]
        with ThreadPoolExecutor(max_workers=8) as pool:
            for name, keys in zip(unread, pool.map(self._checked_keys, unread), strict=True):
                if keys is not None:
                    self._keys_of[name] = keys
        index: dict[str, tuple[str, int]] = {}
        for name in names:
            for row, key in enumerate(self._keys_of.get(name, [])):
                index.setdefault(key, (name, row))
        return index

    def _checked_keys(self, chunk: str) -> list[str] | None:
        """The chunk's keys, or None if they fail their digest (the chunk is set aside)."""
        try:
            return self._read_keys(chunk)
        except CorruptChunk:
            return None

    def keys(self) -> set[str]:
        return set(self.index())

    def __contains__(self, key: str) -> bool:
        return key in self.index()

    def __len__(self) -> int:
        return len(self.index())

    def read(self, keys: Sequence[str]) -> np.ndarray:
        """The vectors of ``keys``, in order, as one float32 array: each chunk is read once.
        A chunk that fails its digests is set aside and the read fails, naming it."""
        keys = list(keys)
        try:
            try:
                return self._read(keys, self.index())
            except FileNotFoundError:  # a compaction replaced a chunk after it was listed
                return self._read(keys, self.index())
        except CorruptChunk as error:
            raise CorruptChunk(f"feature store {self.location}: {error}; it is set aside, so "
                               "run the features stage again (tlpipe run, or dvc repro) to "
                               "compute its vectors anew") from None

    def verify(self, keys: Sequence[str]) -> list[str]:
        """Check the digests of every chunk that serves ``keys`` (once per chunk and process);
        those that fail are set aside and their keys are missing from then on, so the
        features stage computes them again. Returns what was set aside, and why."""
        before = len(self.set_aside)
        index = self.index()
        for chunk in sorted({index[key][0] for key in keys if key in index} - self._verified):
            with contextlib.suppress(CorruptChunk, FileNotFoundError):
                self._vectors(chunk)
        return self.set_aside[before:]

    def _read(self, keys: list[str], index: dict[str, tuple[str, int]]) -> np.ndarray:
        absent = [key for key in keys if key not in index]
        if absent:
            raise KeyError(f"feature store {self.location}: {len(absent)} of {len(keys)} "
                           f"vectors are not stored (first key {absent[0]}); run the features "
                           "stage to compute them")
        if not keys:
            return np.empty((0, 0), dtype=np.float32)
        where = pd.DataFrame([index[key] for key in keys], columns=["chunk", "row"])
        result = None
        for chunk, rows in where.groupby("chunk", sort=False):
            vectors = self._vectors(chunk)
            if result is None:
                result = np.empty((len(keys), vectors.shape[1]), dtype=np.float32)
            result[rows.index.to_numpy()] = vectors[rows["row"].to_numpy()]
        return result

    def _read_keys(self, chunk: str) -> list[str]:
        table = self._read_column(chunk, "key")
        keys = table.column("key").to_pylist()
        self._check(chunk, table, KEYS_DIGEST, _keys_digest(keys), "keys")
        return keys

    def _vectors(self, chunk: str) -> np.ndarray:
        """The chunk's vectors, checked against their digest (set aside if they fail)."""
        table = self._read_column(chunk, "vector")
        vectors = _matrix(table.column("vector"))
        if chunk not in self._verified:
            self._check(chunk, table, VECTORS_DIGEST, _digest(vectors.tobytes()), "vectors")
            self._verified.add(chunk)
        return vectors

    def _read_column(self, chunk: str, column: str) -> pa.Table:
        try:
            return pq.read_table(chunk, columns=[column], filesystem=self.fs,
                                 page_checksum_verification=True)
        except FileNotFoundError:
            raise
        except (OSError, pa.ArrowException) as error:  # a page checksum, or a torn footer
            raise self._set_aside(chunk, f"chunk {chunk} is unreadable ({error})") from None

    def _check(self, chunk: str, table: pa.Table, field: bytes, actual: str, what: str
               ) -> None:
        expected = (table.schema.metadata or {}).get(field)
        if expected is not None and expected.decode() != actual:  # None: before digests
            raise self._set_aside(chunk, f"chunk {chunk}: its {what} do not match the digest "
                                         "written with them")

    def _set_aside(self, chunk: str, why: str) -> CorruptChunk:
        """Rename a failing chunk out of the listing (kept for inspection, not deleted); the
        error to raise."""
        with contextlib.suppress(FileNotFoundError):  # another process set it aside first
            self.fs.mv(chunk, chunk + CORRUPT_SUFFIX)
        self._keys_of.pop(chunk, None)
        if why not in self.set_aside:
            self.set_aside.append(why)
        return CorruptChunk(why)

    @contextlib.contextmanager
    def writer(self) -> Iterator[ChunkWriter]:
        """Vectors added are written a chunk at a time; the rest when the block ends, also on
        an error (each vector added is whole). A killed process loses at most one chunk's
        worth, and nothing half-written is ever visible."""
        writer = ChunkWriter(self)
        try:
            yield writer
        finally:
            writer.flush()

    def write_chunk(self, keys: Sequence[str], vectors: np.ndarray) -> str:
        """One new chunk file, made visible whole or not at all; its path."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        keys = list(keys)
        table = pa.table({
            "key": pa.array(keys, pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)),
                                                        vectors.shape[1]),
        }).replace_schema_metadata({KEYS_DIGEST: _keys_digest(keys),
                                    VECTORS_DIGEST: _digest(vectors.tobytes())})
        name = f"{self.chunks_dir}/{time.time_ns():020d}-{uuid.uuid4().hex}{CHUNK_SUFFIX}"
        temporary = f"{name}{TEMPORARY_SUFFIX}"
        try:
            self.fs.makedirs(self.chunks_dir, exist_ok=True)
            with self.fs.open(temporary, "wb") as handle:
                # Vectors barely compress; keys are unique, so no dictionary either.
                pq.write_table(table, handle, compression={"key": "zstd", "vector": "none"},
                               use_dictionary=False, write_statistics=False,
                               write_page_checksum=True)
            self.fs.mv(temporary, name)
        except OSError as error:  # disk full, read-only, no permission: say where and why
            why = error.strerror or str(error)
            raise StoreWriteError(
                f"feature store {self.location}: cannot write a chunk ({why}): free space "
                "there, or set features.store to a writable place; vectors already stored are "
                "kept") from error
        finally:
            with contextlib.suppress(OSError):  # gone already, or never made
                self.fs.rm(temporary)
        return name

    def compact(self) -> int:
        """Merge chunks under half full into full ones (several small runs each leave one),
        those of one vector width together (two backbones can share a store); delete writers'
        stale temporary files. Returns the number of files removed."""
        self._remove_stale_temporaries()
        names = self.chunks()
        try:
            index = self.index(names)
            by_width: dict[int, list[str]] = {}
            for name in names:
                if len(self._keys_of[name]) < self.chunk_vectors // 2:
                    by_width.setdefault(self._vectors(name).shape[1], []).append(name)
            merges = []
            for small in by_width.values():
                if len(small) >= 2:
                    keys = [key for name in small for key in self._keys_of[name]
                            if index[key][0] == name]  # each key once, from where it is served
                    merges.append((small, keys, self._read(keys, index)))
        except FileNotFoundError:  # another process (a concurrent shard) merged them first
            return 0
        for small, keys, vectors in merges:
            with self.writer() as writer:
                writer.add(keys, vectors)
            for name in small:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm(name)
                self._keys_of.pop(name, None)
        return sum(len(small) for small, _, _ in merges)

    def _remove_stale_temporaries(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            for path in self.fs.ls(self.chunks_dir, detail=False):
                if path.endswith(TEMPORARY_SUFFIX):
                    with contextlib.suppress(FileNotFoundError, NotImplementedError):
                        age = time.time() - self.fs.modified(path).timestamp()
                        if age > STALE_TEMPORARY_S:
                            self.fs.rm(path)


class ChunkWriter:
    def __init__(self, store: FeatureStore):
        self.store = store
        self._keys: list[str] = []
        self._vectors: list[np.ndarray] = []

    def add(self, keys: Sequence[str], vectors: np.ndarray) -> None:
        for key, vector in zip(keys, vectors, strict=True):
            self._keys.append(key)
            self._vectors.append(np.asarray(vector, dtype=np.float32))
            if len(self._keys) >= self.store.chunk_vectors:
                self.flush()

    def flush(self) -> None:
        if self._keys:
            self.store.write_chunk(self._keys, np.stack(self._vectors))
            self._keys, self._vectors = [], []


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _keys_digest(keys: list[str]) -> str:
    return _digest("\n".join(keys).encode())


def _matrix(column: pa.ChunkedArray) -> np.ndarray:
    array = column.combine_chunks()
    return array.flatten().to_numpy().reshape(len(array), array.type.list_size)


def load_split(plan: pd.DataFrame, store: FeatureStore, split: str, classes: list[str]
               ) -> tuple[torch.Tensor, torch.Tensor]:
    rows = plan[plan["split"] == split]
    if rows.empty:
        return torch.empty(0), torch.empty(0, dtype=torch.long)
    features = torch.from_numpy(store.read(rows["key"].tolist()))
    labels = torch.tensor([classes.index(label) for label in rows["label"]], dtype=torch.long)
    return features, labels
