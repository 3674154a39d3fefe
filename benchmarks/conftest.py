"""pytest-benchmark setup for ``benchmarks/bench_*.py``.

The benchmark modules reuse the case definitions of ``fastgan.bench`` (the same ones ``python -m fastgan bench``
runs), so both always measure the same thing. Options:

    --fastgan-preset {quick,default,full}   case matrix (default: quick on CPU, default = the full matrix on CUDA)
    --fastgan-no-compile                    leave out the torch.compile baseline

``pytest benchmarks/ --benchmark-disable`` runs every case once as a smoke check.
"""
from __future__ import annotations

import fnmatch
import os
import sys

import pytest

try:
    import fastgan  # noqa: F401
except ImportError:  # run from a checkout without installing: use the source tree
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def pytest_addoption(parser):
    group = parser.getgroup("fastgan benchmarks")
    group.addoption("--fastgan-preset", choices=("quick", "default", "full"), default=None,
                    help="case matrix for benchmarks/ (default: quick on CPU, the full matrix on CUDA)")
    group.addoption("--fastgan-no-compile", action="store_true", help="skip the torch.compile baseline")


def pytest_collect_file(file_path, parent):
    """Collect ``bench_*.py`` as test modules (pytest only looks at ``test_*.py`` by default), unless the
    project's ``python_files`` setting already matches them."""
    if file_path.suffix != ".py" or not file_path.name.startswith("bench_"):
        return None
    patterns = parent.config.getini("python_files")
    if any(fnmatch.fnmatch(file_path.name, p) for p in patterns):
        return None
    return pytest.Module.from_parent(parent, path=file_path)


@pytest.fixture(scope="session")
def copy_ceilings():
    """Copy bandwidth per device type, measured once per session on first use (GB/s, read + written)."""
    from fastgan.bench.timing import copy_ceiling

    cache: dict[str, float] = {}

    def get(device) -> float:
        if device.type not in cache:
            cache[device.type] = copy_ceiling(device)["gbps"]
        return cache[device.type]

    return get
