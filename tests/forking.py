"""Run a function in a forked child and get back what it returned (tests of fork safety)."""

from __future__ import annotations

import os
import select
import signal
import time
import warnings
from collections.abc import Callable

import pytest

CHILD_TIMEOUT = 30.0


def in_child(work: Callable[[], str]) -> str:
    """Run ``work`` in a forked child; return what it printed (or raise its error text)."""
    read_end, write_end = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # fork with threads (3.12+)
        pid = os.fork()
    if pid == 0:  # child: never return into pytest
        code = 0
        try:
            out = work()
        except BaseException as exc:
            out, code = f"ERROR {type(exc).__name__}: {exc}", 1
        os.write(write_end, out.encode())
        os._exit(code)
    os.close(write_end)
    chunks = []
    deadline = time.monotonic() + CHILD_TIMEOUT
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([read_end], [], [], remaining)[0]:
                os.kill(pid, signal.SIGKILL)  # never leave a hung child behind
                os.waitpid(pid, 0)
                pytest.fail(f"forked child still running after {CHILD_TIMEOUT} s (hung)")
            chunk = os.read(read_end, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(read_end)
    _, status = os.waitpid(pid, 0)
    text = b"".join(chunks).decode()
    assert os.waitstatus_to_exitcode(status) == 0, text
    return text
