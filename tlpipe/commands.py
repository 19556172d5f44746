"""Running git, DVC and server tools as subprocesses, with failures that say what broke."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def python_tool(module: str) -> list[str]:
    """A Python command-line tool (dvc, prefect, mlflow) of this interpreter's environment."""
    return [sys.executable, "-m", module]


def run_command(command: list[str], what: str, error: type[Exception] = RuntimeError,
                cwd: Path | None = None, env: dict[str, str] | None = None,
                timeout_s: float | None = None) -> str:
    """Run ``command`` and return its standard output; on failure, or after ``timeout_s``,
    raise ``error`` naming ``what``, the folder, the command and the end of what it printed."""
    where = f" in {cwd}" if cwd else ""
    try:
        result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True,
                                timeout=timeout_s)
    except subprocess.TimeoutExpired as expired:
        printed = expired.stderr or expired.stdout or b""
        printed = printed.decode(errors="replace") if isinstance(printed, bytes) else printed
        raise error(f"{what} did not finish within {timeout_s:g} s{where} "
                    f"(`{' '.join(map(str, command))}`), and was stopped:\n"
                    f"{printed.strip()[-2000:]}") from None
    if result.returncode != 0:
        raise error(f"{what} failed{where} (`{' '.join(map(str, command))}`):\n"
                    f"{(result.stderr or result.stdout).strip()[-2000:]}")
    return result.stdout.strip()
