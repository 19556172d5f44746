"""Shared set-up for the benchmarks: the demo data's validated manifest and the backbone."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
DEMO = (REPO / ".." / "shared" / "datasets" / "hymenoptera_data").resolve()
sys.path.insert(0, str(REPO))

from tlpipe.ops.runtime import apply_runtime_defaults  # noqa: E402

apply_runtime_defaults(REPO)


def demo_manifest():
    """The demo set's validated manifest, the GIF placeholder quarantined as in params.yaml."""
    from tlpipe.data.scan import check_folder
    from tlpipe.params_file import parse_params

    params = parse_params({"validation": {"quarantine": ["format"]}})
    if not DEMO.is_dir():
        sys.exit(f"demo data not found at {DEMO}")
    report, kept = check_folder(DEMO, params)
    if not report.passed:
        sys.exit(f"the demo data at {DEMO} fails validation:\n{report.to_markdown()}")
    return kept, params
