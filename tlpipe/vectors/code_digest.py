"""The digest of the code that turns a file into a vector: part of every vector's cache key.

The code is this folder (an import-linter contract keeps it from importing any other wing). The
text path's modules (``text_*.py``) decide only text vectors and the others only image vectors,
so an edit to one path never recomputes the other's; the store and the view seeds serve both.
"""

from __future__ import annotations

import functools
from pathlib import Path

from tlpipe.fsio import file_sha256, sha256_text

VECTOR_CODE = Path(__file__).parent
SHARED = frozenset({"store.py", "code_digest.py", "__init__.py"})


@functools.cache
def vector_code_digest(modality: str = "image") -> str:
    files = sorted(file for file in VECTOR_CODE.rglob("*.py")
                   if file.name in SHARED or file.name.startswith("text_") == (modality == "text"))
    return sha256_text(*(f"{file.relative_to(VECTOR_CODE).as_posix()}:{file_sha256(file)}"
                         for file in files))
