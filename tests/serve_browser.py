"""Helpers shared by the browser test and benchmarks/bench_serve.py: a real `etp-search serve`
subprocess and the OS's headless Chromium driven by Selenium (Selenium Manager never downloads)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

CHROMIUM = os.environ.get("ETP_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ETP_CHROMEDRIVER", "/usr/bin/chromedriver")
#: Flags that keep a headless Chromium quiet on a machine without network or GPU.
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage", "--window-size=1400,1000")


def browser_missing() -> str | None:
    """Why the browser test cannot run here, or None when it can."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).exists():
            return f"{path} is missing (apt-get install -y chromium chromium-driver)"
    return None


def start_server(store: Path, *args: str, timeout: float = 180.0,
                 env: dict[str, str] | None = None) -> tuple[subprocess.Popen, str]:
    """Run `etp-search serve --port 0` on ``store``; returns the process and its base URL once it listens."""
    exe = Path(sys.executable).with_name("etp-search")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-c", "from etp_search.cli import main; main()"]
    env = dict(os.environ, OMP_NUM_THREADS="1", **(env or {}))
    proc = subprocess.Popen(cmd + ["serve", "--store", str(store), "--port", "0", *args],
                            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, env=env)
    lines: list[str] = []
    found: dict[str, str] = {}

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.append(line)
            m = re.search(r"serving on (http://\S+?)/ ", line)
            if m:
                found["url"] = m.group(1)

    threading.Thread(target=read, daemon=True).start()  # keeps draining stderr so the server never blocks
    deadline = time.time() + timeout
    while "url" not in found:
        if proc.poll() is not None or time.time() > deadline:
            stop_server(proc)
            raise RuntimeError("etp-search serve did not start:\n" + "".join(lines[-20:]))
        time.sleep(0.1)
    return proc, found["url"]


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chromium() -> tuple[Any, str]:
    """A headless Chromium WebDriver with a fresh profile; returns (driver, profile dir to delete)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for flag in CHROMIUM_FLAGS:
        opts.add_argument(flag)
    profile = tempfile.mkdtemp(prefix="etp-chromium-")
    opts.add_argument(f"--user-data-dir={profile}")
    return webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts), profile


def close_chromium(driver: Any, profile: str) -> None:
    try:
        driver.quit()
    finally:
        shutil.rmtree(profile, ignore_errors=True)


#: JavaScript: how many dark (trace) pixels the first canvas matching a selector holds.
DARK_PIXELS_JS = """
const c = document.querySelector(arguments[0]);
if (!c) return -1;
const px = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
let n = 0;
for (let i = 0; i < px.length; i += 4) if (px[i] < 90 && px[i + 1] < 90 && px[i + 2] < 90) n++;
return n;
"""
