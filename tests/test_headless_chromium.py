"""The browser helper on a static page: load, wait for script-made content, fail clearly."""

from __future__ import annotations

import pytest
from headless_chromium import BrowserError, Chromium

pytestmark = [pytest.mark.slow, pytest.mark.browser]

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>helper</title></head>
<body style="background:#fff"><p id="static">static text</p>
<script>
  // content that a script adds later, as a single-page app does
  window.renderLate = () => setTimeout(() => {
    const late = document.createElement("p");
    late.id = "late";
    late.textContent = "rendered " + (6 * 7);
    document.body.appendChild(late);
  }, 300);
</script></body></html>
"""


def test_static_page_wait_and_screenshot(tmp_path):
    page = tmp_path / "page.html"
    page.write_text(PAGE)
    with Chromium(width=640, height=360) as browser:
        browser.goto(page.as_uri())
        assert browser.evaluate("document.title") == "helper"
        assert browser.evaluate("document.getElementById('late')") is None
        browser.evaluate("renderLate()")
        browser.wait_for("document.getElementById('late')", timeout_s=30)
        assert [line for line in browser.text().splitlines() if line] == [
            "static text",
            "rendered 42",
        ]
        shot = browser.screenshot(tmp_path / "page.png")
        with pytest.raises(BrowserError, match=r"timed out after 500 ms waiting for: .*missing"):
            browser.wait_for("document.getElementById('missing')", timeout_s=0.5)
        with pytest.raises(BrowserError, match="JavaScript error: ReferenceError"):
            browser.evaluate("undefinedName + 1")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert int.from_bytes(data[16:20], "big") == 640  # PNG header: width, height
    assert int.from_bytes(data[20:24], "big") == 360
