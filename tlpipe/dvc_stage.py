"""Entry point of the DVC stages: ``python -m tlpipe.dvc_stage STAGE``.

Every stage of one ``dvc repro`` (or ``dvc exp run``) logs under one MLflow parent run, like a
flow run: the parent is keyed by the DVC process found among this process's ancestors. The
parent is marked FINISHED after each stage and reopened by the next, so whichever stage is
last leaves it finished, and a failing stage leaves it FAILED with the reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from tlpipe.runtime import apply_runtime_defaults


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
    from tlpipe.tracked import DVC_STAGES

    if len(argv) != 1 or argv[0] not in DVC_STAGES:
        print(f"usage: python -m tlpipe.dvc_stage {{{','.join(DVC_STAGES)}}}", file=sys.stderr)
        return 2
    project = Path.cwd()
    apply_runtime_defaults(project)
    from tlpipe import steps, tracking
    from tlpipe.config import ConfigError, load_params

    try:
        params = load_params(project / "params.yaml")
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    session, owner = dvc_session()
    context = tracking.session_run(
        params.tracking, project, session,
        {"params_hash": params.digest(), "backbone": params.backbone.name, "trigger": "dvc",
         tracking.PID_TAG: str(owner),  # the dvc process: it outlives each stage's process
         **tracking.lineage_tags(project, steps.data_root(params, project))})
    with tracking.finishing(context.parent_run_id):
        DVC_STAGES[argv[0]](context, params, project)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
