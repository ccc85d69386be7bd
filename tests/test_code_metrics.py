"""The package's functions stay short and documented (scripts/code_metrics.py, ``make metrics``)."""

from __future__ import annotations

import importlib.util
import sys

from conftest import REPO_ROOT

_spec = importlib.util.spec_from_file_location(
    "code_metrics", REPO_ROOT / "scripts" / "code_metrics.py"
)
code_metrics = importlib.util.module_from_spec(_spec)
sys.modules["code_metrics"] = code_metrics  # dataclasses look their module up
_spec.loader.exec_module(code_metrics)


def test_function_lengths_and_docstrings_keep_their_limits():
    found = code_metrics.measure(REPO_ROOT / "src") + code_metrics.measure(REPO_ROOT / "stages")
    result = code_metrics.summary(found)
    report = code_metrics.report(result)
    limits = code_metrics.LIMITS
    assert result["median"] <= limits["median"], report
    assert result["p90"] <= limits["p90"], report
    assert result["max"] <= limits["max"], report
    assert result["undocumented"] == [], report


def test_no_file_is_longer_than_the_limit():
    assert code_metrics.long_files(REPO_ROOT / "src", REPO_ROOT / "stages") == []


def test_a_long_file_is_named(tmp_path):
    (tmp_path / "long.py").write_text("x = 1\n" * (code_metrics.FILE_LINES + 1))
    (tmp_path / "short.py").write_text("x = 1\n" * code_metrics.FILE_LINES)
    assert code_metrics.long_files(tmp_path) == [
        f"{tmp_path / 'long.py'} ({code_metrics.FILE_LINES + 1})"
    ]


def test_lengths_are_measured_from_def_to_the_last_line(tmp_path):
    (tmp_path / "m.py").write_text(
        "@decorator\n"
        "def public(x):\n"
        '    """Doc."""\n'
        "    def inner():\n"
        "        return 1\n"
        "    return x\n"
        "\n"
        "class _Hidden:\n"
        "    def method(self):\n"
        "        pass\n"
    )
    found = {f.name: f for f in code_metrics.measure(tmp_path)}
    assert found["public"].length == 5 and found["public"].public and found["public"].documented
    assert found["inner"].length == 2 and not found["inner"].public
    assert not found["_Hidden.method"].public
