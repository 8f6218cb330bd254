"""The skip policy of tests/support/suite_policy.py, run on a small suite in a child pytest:
`gpu` tests skip without CUDA, and with CI=true any other skip fails the run."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

CONFTEST = """
from tests.support import suite_policy
from tests.support.suite_policy import pytest_make_collect_report, pytest_runtest_makereport

suite_policy.cuda_available = lambda: {cuda}


def pytest_collection_modifyitems(items):
    suite_policy.skip_gpu_tests_without_cuda(items)
"""

TESTS = """
import pytest


def test_runs():
    pass


@pytest.mark.gpu
def test_on_gpu():
    pass


@pytest.mark.skipif(True, reason="a tool is missing")
def test_skipif():
    pass


def test_skips_itself():
    pytest.skip("no service here")


@pytest.fixture
def needs_service():
    pytest.skip("the fixture found no service")


def test_fixture_skips(needs_service):
    pass


@pytest.mark.xfail(reason="a known bug", strict=True)
def test_known_bug():
    raise AssertionError
"""

MODULE_SKIP = """
import pytest

pytest.importorskip("no_such_module_here")


def test_never_collected():
    pass
"""


def run_suite(tmp_path: Path, *, ci: bool, cuda: bool, module_skip: bool = False) -> str:
    (tmp_path / "pytest.ini").write_text(
        "[pytest]\naddopts = --strict-markers -rA -p no:cacheprovider\n"
        "markers =\n    gpu: needs CUDA\n"
    )
    (tmp_path / "conftest.py").write_text(CONFTEST.format(cuda=cuda))
    (tmp_path / "test_sample.py").write_text(TESTS)
    if module_skip:
        (tmp_path / "test_module_skip.py").write_text(MODULE_SKIP)
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = str(ROOT)
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # none needed; schemathesis et al. load slowly
    if ci:
        env["CI"] = "true"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    return done.stdout + done.stderr


def outcomes(output: str) -> dict[str, str]:
    """test name -> PASSED/FAILED/SKIPPED/XFAIL/ERROR from the -rA summary."""
    found = {}
    for word, name in re.findall(
        r"^(PASSED|FAILED|SKIPPED|XFAIL|ERROR) \S*::(test_\w+)", output, re.MULTILINE
    ):
        found[name] = word
    return found


def test_outside_ci_skips_are_reported_not_failed(tmp_path: Path) -> None:
    output = run_suite(tmp_path, ci=False, cuda=False)
    assert re.search(r"1 passed, 4 skipped, 1 xfailed", output), output
    assert "needs a CUDA device" in output


@pytest.mark.parametrize("cuda", [False, True])
def test_in_ci_only_gpu_tests_may_skip(tmp_path: Path, cuda: bool) -> None:
    output = run_suite(tmp_path, ci=True, cuda=cuda)
    found = outcomes(output)
    assert found.get("test_runs") == "PASSED", output
    assert found.get("test_known_bug") == "XFAIL", output
    # test_skipif and test_fixture_skips skip during setup: reported as errors in setup
    assert found.get("test_skipif") in ("FAILED", "ERROR"), output
    assert found.get("test_skips_itself") == "FAILED", output
    assert found.get("test_fixture_skips") in ("FAILED", "ERROR"), output
    assert "only tests marked gpu may skip in CI: a tool is missing" in output
    assert "only tests marked gpu may skip in CI: no service here" in output
    if cuda:
        assert found.get("test_on_gpu") == "PASSED", output
        assert "1 skipped" not in output
    else:
        assert "needs a CUDA device" in output
        assert re.search(r"\b1 skipped\b", output), output


def test_in_ci_a_skipped_module_fails(tmp_path: Path) -> None:
    output = run_suite(tmp_path, ci=True, cuda=True, module_skip=True)
    assert "module skipped with CI=true" in output, output
    assert "no_such_module_here" in output
    assert re.search(r"\b1 error\b", output), output
