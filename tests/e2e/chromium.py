"""Headless Chromium for the page tests: a page opened from disk with the network blocked.

The pages count their own uncaught errors on ``<body data-errors>``; :func:`dump_dom`
returns the DOM after the page ran, and Chromium's log for :func:`console_errors`.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")

#: the marks of a test that needs the browser (skipped where it is not installed)
NEEDS_CHROMIUM = [
    pytest.mark.browser,
    pytest.mark.skipif(
        CHROMIUM is None, reason="headless Chromium not installed (apt-get install chromium)"
    ),
]


def dump_dom(page: Path, profile: Path, window: str = "1280,2000") -> tuple[str, str]:
    """Open ``page`` in headless Chromium with no network; return (DOM, stderr)."""
    cmd = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-extensions",
        "--no-first-run",
        "--no-default-browser-check",
        f"--user-data-dir={profile}",
        # no name resolves and every proxied request goes nowhere: the page must need neither
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE localhost",
        "--proxy-server=127.0.0.1:9",
        "--enable-logging=stderr",
        "--v=0",
        f"--window-size={window}",
        "--virtual-time-budget=10000",
        "--dump-dom",
        page.resolve().as_uri(),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout, proc.stderr


def body_attr(dom: str, name: str) -> str | None:
    m = re.search(r"<body(\s[^>]*)?>", dom[dom.find("</head>") :])
    assert m is not None, "no <body> in the dumped DOM"
    attr = re.search(rf'\b{name}="([^"]*)"', m.group(1) or "")
    return attr.group(1) if attr else None


def console_errors(stderr: str) -> list[str]:
    return [
        line
        for line in stderr.splitlines()
        if "Uncaught" in line or ("CONSOLE" in line and "rror" in line)
    ]
