"""A pytest plugin that writes each failure's report to a file the moment it happens.

For runs cut short by an outer ``timeout`` (a lent GPU's lease): pytest prints tracebacks only at the end of the
session, so a killed run, under pytest-xdist especially, leaves the names of failed tests and no reasons. With
``-p pytest_failures_now`` (this folder on ``PYTHONPATH``) and ``FASTGAN_FAILURES_FILE=path``, each failed or
errored test's node id, phase and short traceback is appended to ``path`` and flushed as its report arrives (under
xdist, in the controlling process). Without the variable the plugin does nothing.
"""
from __future__ import annotations

import os

MAX_CHARS = 6000  # per report: enough for the assertion and the frames that matter
_in_worker = False


def pytest_configure(config):
    global _in_worker
    _in_worker = hasattr(config, "workerinput")  # an xdist worker: the controller writes its reports


def pytest_runtest_logreport(report):
    path = os.environ.get("FASTGAN_FAILURES_FILE")
    if not path or not report.failed or _in_worker:
        return
    text = report.longreprtext or ""
    if len(text) > MAX_CHARS:
        text = text[: MAX_CHARS // 2] + "\n[...]\n" + text[-MAX_CHARS // 2:]
    with open(path, "a") as f:
        f.write(f"==== {report.nodeid} ({report.when}, {report.duration:.1f} s)\n{text}\n\n")
