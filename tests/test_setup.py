"""`make test` is all the set-up (issue 25): the browser tests get Chromium or say why not."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from conftest import REPO_ROOT

INSTALL = REPO_ROOT / "scripts" / "install_chromium.sh"


def _bare_path(tmp_path: Path, *tools: str) -> str:
    """A PATH folder holding only ``tools`` (links to the real ones): no chromium, no apt-get."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for tool in tools:
        (folder / tool).symlink_to(shutil.which(tool))
    return str(folder)


def test_install_script_without_apt_says_the_browser_tests_skip(tmp_path):
    env = {"PATH": _bare_path(tmp_path, "bash", "id"), "HOME": str(tmp_path)}
    result = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0  # `make test` goes on
    assert "no chromium and no apt-get here: the browser tests will be skipped" in result.stderr
    assert result.stdout == ""


def test_install_script_does_nothing_when_chromium_is_given(tmp_path):
    fake = tmp_path / "my-chromium"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    env = {"PATH": _bare_path(tmp_path, "bash", "id", "apt-get"), "CHROMIUM": str(fake)}
    result = subprocess.run(
        ["bash", str(INSTALL)], env=env, capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout, result.stderr) == (0, "", "")


BROWSER_TEST = """
import pytest

@pytest.mark.browser
def test_needs_chromium():
    assert False, "ran without Chromium"

def test_plain():
    assert True
"""


def _pytest(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    """Run pytest on a marked test with this suite's conftest and no Chromium anywhere."""
    folder = tmp_path / "suite"
    folder.mkdir(exist_ok=True)
    for helper in ("conftest.py", "headless_chromium.py"):
        shutil.copy(REPO_ROOT / "tests" / helper, folder / helper)
    (folder / "test_marked.py").write_text(BROWSER_TEST)
    base = {k: v for k, v in os.environ.items() if k != "CI"}
    base.update(CHROMIUM=str(tmp_path / "no-chromium"), **env)
    command = [sys.executable, "-m", "pytest", "-rs", "-p", "no:cacheprovider", str(folder)]
    command += ["-o", "markers=browser: x", "-W", "ignore::pytest.PytestUnknownMarkWarning"]
    return subprocess.run(command, env=base, capture_output=True, text=True, timeout=300)


def test_browser_tests_skip_naming_the_install_without_chromium(tmp_path):
    result = _pytest(tmp_path)
    assert result.returncode == 0, result.stdout
    assert "1 passed, 1 skipped" in result.stdout
    assert f"no Chromium at {tmp_path / 'no-chromium'}: install it with" in result.stdout


def test_browser_tests_fail_under_ci_without_chromium(tmp_path):
    result = _pytest(tmp_path, CI="1")
    assert result.returncode == 1, result.stdout
    assert "1 passed, 1 error" in result.stdout
    assert "CI is set and the browser tests cannot run" in result.stdout
