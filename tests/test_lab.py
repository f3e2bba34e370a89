"""`make lab` for both audiences: the real target, started on a free loopback port.

Instructors: nbgrader's server extension finds the course's config and root (it lists the
course's assignments, and logs neither "No nbgrader_config.py" nor that the course root is
outside the server root). Learners: a `.md` reading page opens as a notebook (jupytext), in
headless Chromium (skipped, with the reason, when there is none). The server is stopped after.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import ROOT, chapter_names

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("lab")]

READING_PAGE = "chapters/00-getting-started/index.md"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str, token: str, timeout: float = 30):
    req = urllib.request.Request(url, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read().decode())


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    port, token = _free_port(), secrets.token_hex(16)
    log = tmp_path_factory.mktemp("lab") / "lab.log"
    # checkpoints go to a scratch folder: opening a page must not write into chapters/
    checkpoints = tmp_path_factory.mktemp("checkpoints")
    args = (f"--no-browser --ServerApp.ip=127.0.0.1 --ServerApp.port={port} "
            f"--ServerApp.port_retries=0 --IdentityProvider.token={token} "
            f"--FileCheckpoints.checkpoint_dir={checkpoints}"
            + (" --allow-root" if os.geteuid() == 0 else ""))  # CI containers run as root
    # -o: the venv counts as up to date (a test must not reinstall it)
    with open(log, "w") as out:
        proc = subprocess.Popen(["make", "-s", "-o", ".venv/.installed", "lab", f"ARGS={args}"],
                                cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                pytest.fail(f"make lab exited ({proc.returncode}):\n{log.read_text()[-3000:]}")
            try:
                _get(f"{base}/api/status", token, timeout=5)
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"JupyterLab did not answer in 180 s:\n{log.read_text()[-3000:]}")
                time.sleep(1)
        yield base, token, log
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def test_formgrader_finds_the_course(lab):
    base, token, log = lab
    assignments = _get(f"{base}/formgrader/api/assignments", token, timeout=60)
    names = {a["name"] for a in assignments}
    missing = set(chapter_names()) - names
    assert not missing, f"formgrader does not list {sorted(missing)} (it lists {sorted(names)})"
    text = log.read_text()
    assert "No nbgrader_config.py" not in text
    assert "not a subdirectory" not in text


def test_reading_page_opens_as_a_notebook(lab):
    from test_browser import CHROMIUM_ARGS, browser_or_skip

    exe = browser_or_skip()
    base, token, _ = lab
    assert (ROOT / READING_PAGE).is_file()

    async def open_page():
        from playwright.async_api import async_playwright

        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)
            page = await browser.new_page(viewport={"width": 1280, "height": 800})
            await page.goto(f"{base}/lab/tree/{READING_PAGE}?token={token}", timeout=120_000)
            # an empty notebook shows one blank cell while its content loads
            await page.wait_for_function(
                "() => document.querySelectorAll('.jp-NotebookPanel .jp-MarkdownCell').length > 0"
                " && document.querySelectorAll('.jp-NotebookPanel .jp-CodeCell').length > 0",
                timeout=120_000)
            kinds = await page.evaluate(
                "() => [...document.querySelectorAll('.jp-NotebookPanel .jp-Cell')]"
                ".map(c => c.classList.contains('jp-CodeCell') ? 'code' : 'other')")
            shot = ROOT / "_build" / "screenshots"
            shot.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(shot / "lab__reading_page.png"))
            await browser.close()
            return kinds

    kinds = asyncio.run(open_page())
    assert "code" in kinds and "other" in kinds, f"{READING_PAGE} did not open as a notebook: {kinds}"
    stray = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "chapters").rglob(".ipynb_checkpoints"))
    assert not stray, f"opening a page wrote checkpoints into the tree: {stray}"
