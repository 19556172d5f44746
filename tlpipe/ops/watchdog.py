"""Servers that end with the process that started them, however that process ends.

A server started as a subprocess outlives its parent when the parent is killed (SIGKILL, or a
SIGTERM that skips ``atexit``): it is reparented to init and keeps its port. A watchdog is a
tiny process holding the read end of a pipe whose write end only the parent has; when the
parent ends, by any means, the kernel closes that end, the watchdog reads end-of-file and
stops the server. Unlike a parent-death signal (``prctl``), this is portable and does not
depend on which thread started the server.
"""

from __future__ import annotations

import os
import subprocess
import sys

import psutil

_held_pipes: list[int] = []  # write ends: open for as long as this process lives

_WATCH = r"""
import signal, sys, time
import psutil
signal.signal(signal.SIGINT, signal.SIG_IGN)  # the terminal's Ctrl-C is for the parent
pid, started = int(sys.argv[1]), float(sys.argv[2])
sys.stdin.buffer.read()  # returns when the parent has ended, however it ended
try:
    server = psutil.Process(pid)
    if server.create_time() == started:  # the same process, not a reused pid
        server.terminate()
        try:
            server.wait(float(sys.argv[3]))
        except psutil.TimeoutExpired:
            server.kill()
except psutil.NoSuchProcess:
    pass
"""


def stop_with_this_process(pid: int, grace_s: float = 5.0) -> subprocess.Popen:
    """Start a watchdog that stops process ``pid`` (SIGTERM, then SIGKILL after ``grace_s``)
    as soon as this process ends."""
    started = psutil.Process(pid).create_time()
    read_end, write_end = os.pipe()
    try:
        watchdog = subprocess.Popen(
            [sys.executable, "-c", _WATCH, str(pid), repr(started), str(grace_s)],
            stdin=read_end, stdout=subprocess.DEVNULL, start_new_session=True)
    finally:
        os.close(read_end)
    _held_pipes.append(write_end)  # never written; os.pipe() ends are not inherited
    return watchdog

