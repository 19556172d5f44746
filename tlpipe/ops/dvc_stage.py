"""Entry point of the DVC stages: ``python -m tlpipe.ops.dvc_stage STAGE``, for each stage of
``tlpipe.pipeline`` that ``dvc.yaml`` declares.

Every stage of one ``dvc repro`` (or ``dvc exp run``) logs under one MLflow parent run, like a
flow run: the parent is keyed by the DVC process found among this process's ancestors. The
parent is marked FINISHED after each stage and reopened by the next, so whichever stage is
last leaves it finished, and a failing stage leaves it FAILED with the reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tlpipe.ops.runtime import apply_runtime_defaults


def _ancestors(pid: int) -> list[tuple[int, str, str]]:
    """(pid, start time, command line) of each ancestor; empty where /proc is not available."""
    chain = []
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            break
        fields = stat.rsplit(")", 1)[1].split()
        chain.append((pid, fields[19], command))
        pid = int(fields[1])
    return chain


def dvc_session() -> tuple[str, int]:
    """An id and pid for the ``dvc`` command running this stage (this process if none)."""
    for pid, started, command in _ancestors(os.getppid()):
        words = command.split()
        if any(Path(word).name == "dvc" for word in words[:2]) or " -m dvc " in f" {command} ":
            return f"dvc-{pid}-{started}", pid
    return f"manual-{os.getpid()}", os.getpid()


def main(argv: list[str]) -> int:
    from tlpipe.pipeline import DVC_STAGES, stage_named

    if len(argv) != 1 or argv[0] not in {stage.name for stage in DVC_STAGES}:
        names = ",".join(stage.name for stage in DVC_STAGES)
        print(f"usage: python -m tlpipe.ops.dvc_stage {{{names}}}", file=sys.stderr)
        return 2
    project = Path.cwd()
    apply_runtime_defaults(project)
    from tlpipe import tags
    from tlpipe.ops import tracking
    from tlpipe.params_file import ConfigError, load_params
    from tlpipe.paths import data_root
    from tlpipe.registry.lineage import lineage_tags

    try:
        params = load_params(project / "params.yaml")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    session, owner = dvc_session()
    context = tracking.session_run(
        params.tracking, project, session,
        {tags.PARAMS_HASH: params.digest(), tags.BACKBONE: params.backbone.name,
         tags.TRIGGER: "dvc",
         tags.PID: str(owner),  # the dvc process: it outlives each stage's process
         **lineage_tags(project, data_root(params, project))})
    with tracking.finishing(context.parent_run_id):
        stage_named(argv[0], DVC_STAGES).module.run(context, params, project)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
