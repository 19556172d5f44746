"""Shared set-up for the benchmarks: the demo data's validated manifest and the backbone."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = (REPO / ".." / "shared" / "datasets" / "hymenoptera_data").resolve()
sys.path.insert(0, str(REPO))

from tlpipe.runtime import apply_runtime_defaults  # noqa: E402

apply_runtime_defaults(REPO)


def demo_manifest():
    """The demo set's manifest, the GIF placeholder quarantined as in the default params."""
    from tlpipe.config import Params
    from tlpipe.manifest import build_manifest

    params = Params()
    if not DEMO.is_dir():
        sys.exit(f"demo data not found at {DEMO}")
    frame = build_manifest(DEMO, params.data, params.split, params.validation.max_pixels)
    return frame[frame["format"].isin(params.validation.allowed_formats)], params
