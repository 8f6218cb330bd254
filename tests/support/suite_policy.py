"""What may skip: a test marked `gpu` where no CUDA device exists, and, outside CI, anything.

tests/conftest.py imports these hooks. With `CI=true` in the environment, a skip of any test
not marked `gpu` (a `skipif`, a `pytest.skip()` in a test or fixture, an `importorskip`) is
reported as a failure, so a green CI run means that every such test ran. Expected failures
(`xfail`) are not skips and are left alone.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Generator

import pytest

GPU_SKIP_REASON = "marked gpu: needs a CUDA device, and none is available"


@functools.cache
def cuda_available() -> bool:
    """Whether torch sees a CUDA device (torch is imported only when a `gpu` test is collected)."""
    import torch

    return bool(torch.cuda.is_available())


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def skip_gpu_tests_without_cuda(items: list[pytest.Item]) -> None:
    """Mark `gpu` tests skipped when there is no CUDA device (the only skip CI accepts)."""
    gpu_items = [item for item in items if item.get_closest_marker("gpu") is not None]
    if gpu_items and not cuda_available():
        for item in gpu_items:
            item.add_marker(pytest.mark.skip(reason=GPU_SKIP_REASON))


def _skip_reason(report: pytest.TestReport | pytest.CollectReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        longrepr = longrepr[2]
    reason = str(longrepr)
    return reason.removeprefix("Skipped: ")


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    report = yield
    if (
        in_ci()
        and report.skipped
        and not hasattr(report, "wasxfail")
        and item.get_closest_marker("gpu") is None
    ):
        report.outcome = "failed"
        report.longrepr = (
            f"skipped with CI=true, and only tests marked gpu may skip in CI: "
            f"{_skip_reason(report)}"
        )
    return report


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(
    collector: pytest.Collector,
) -> Generator[None, pytest.CollectReport, pytest.CollectReport]:
    report = yield
    if in_ci() and report.skipped:  # a module-level skip or importorskip
        report.outcome = "failed"
        report.longrepr = f"module skipped with CI=true: {_skip_reason(report)}"
    return report
