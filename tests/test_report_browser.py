"""The data-set report in a real browser: headless Chromium through selenium.

The page loads from the file system with no console error, the table sorts and filters, a
click opens a video's page (its images load), and a screenshot shows content. Without
Chromium, chromedriver or selenium the test is skipped, except where
``RELGRAPH_REQUIRE_BROWSER=1`` (CI sets it): there it fails.
"""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from relgraph.datasets.report import build_report
from relgraph.datasets.store import Store
from relgraph.datasets.synthetic import CLASS_NAMES, make_clip
from relgraph.io.outputs import write_json, write_npz

REQUIRED = os.environ.get("RELGRAPH_REQUIRE_BROWSER") == "1"


def _browser():
    chromium = next(
        (
            shutil.which(n)
            for n in ("chromium", "chromium-browser", "google-chrome")
            if shutil.which(n)
        ),
        None,
    )
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        chromium = None
    if chromium is None or driver is None:
        message = "headless Chromium, chromedriver and selenium are needed for the report test"
        if REQUIRED:
            pytest.fail(message + " (RELGRAPH_REQUIRE_BROWSER=1)")
        pytest.skip(message)
    return chromium, driver


def fake_store(root: Path, n: int = 12) -> None:
    """A store as ``dataset explain`` writes it (rows and npz), with synthetic maps: the
    report only reads these files, so no model needs to run here."""
    Store(root).create({"test": True})
    rng = np.random.default_rng(0)
    for k in range(n):
        label = CLASS_NAMES[k % 4]
        folder = f"{label}/v_{label}_g{k:02d}"
        row = {
            "key": folder + ".avi",
            "path": f"/data/{folder}.avi",
            "folder": folder,
            "label": label,
            "label_index": k % 4,
            "frames": 16 + k,
            "status": "ok",
            "error": None,
            "clips": 1,
            "looped": False,
        }
        if k == n - 1:
            row.update({"status": "failed", "error": "too short: 3 frame(s)"})
        else:
            clip = make_clip(k % 4, rng)
            prediction = CLASS_NAMES[(k * 7) % 4]
            maps = rng.uniform(-1, 1, (3, 1, 16, 32, 32)).astype(np.float32)
            write_npz(
                root / "videos" / folder / "relevance.npz",
                spatiotemporal=maps[0],
                spatial=maps[1],
                temporal=maps[2],
                frames=clip.frames[None],
            )
            row.update(
                {
                    "prediction": prediction,
                    "probability": float(rng.uniform(0.3, 1)),
                    "correct": prediction == label,
                    "frozen_predictions": [[CLASS_NAMES[t % 4] for t in range(16)]],
                    "frozen_accuracy": 0.25,
                    "temporal_share": float(rng.uniform(0, 1)),
                }
            )
        write_json(root / "videos" / folder / "row.json", row)


@pytest.fixture()
def driver():
    chromium, chromedriver = _browser()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,1000"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    browser = webdriver.Chrome(options=options, service=Service(chromedriver))
    yield browser
    browser.quit()


def severe(browser) -> list[str]:
    return [e["message"] for e in browser.get_log("browser") if e["level"] == "SEVERE"]


def column(browser, index: int) -> list[str]:
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('#videos tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.cells[arguments[0]].getAttribute('data-sort'))",
        index,
    )


def test_report_in_headless_chromium(driver, tmp_path):
    from PIL import Image
    from selenium.webdriver.common.by import By

    store = tmp_path / "store"
    fake_store(store)
    out = build_report(store)
    driver.get((out / "index.html").as_uri())
    assert driver.title == "relgraph data-set report"
    assert severe(driver) == []
    assert len(driver.find_elements(By.CSS_SELECTOR, "#videos tbody tr")) == 12

    # sort by temporal share (column 7): ascending, then descending
    header = driver.find_elements(By.CSS_SELECTOR, "#videos thead th")[7]
    header.click()
    values = [float(v) for v in column(driver, 7) if v]
    assert values == sorted(values) and len(values) == 11
    header.click()
    values = [float(v) for v in column(driver, 7) if v]
    assert values == sorted(values, reverse=True)
    # sort by video name (text)
    driver.find_elements(By.CSS_SELECTOR, "#videos thead th")[1].click()
    names = column(driver, 1)
    assert names == sorted(names, key=str.lower)

    # filter by text and by status
    driver.find_element(By.ID, "filter").send_keys("v_MoveUp")  # in the names of MoveUp videos only
    visible = driver.execute_script(
        "return Array.from(document.querySelectorAll('#videos tbody tr'))"
        ".filter(r => !r.hidden).map(r => r.getAttribute('data-class'))"
    )
    assert visible and set(visible) == {"MoveUp"}
    assert "of 12 shown" in driver.find_element(By.ID, "shown").text
    driver.find_element(By.ID, "filter").clear()
    driver.execute_script(
        "const s = document.getElementById('status-filter'); s.value = 'failed';"
        "s.dispatchEvent(new Event('input'));"
    )
    assert column(driver, 8) == ["failed"]
    driver.execute_script(
        "const s = document.getElementById('status-filter'); s.value = '';"
        "s.dispatchEvent(new Event('input'));"
    )

    # thumbnails loaded
    loaded = driver.execute_script(
        "return Array.from(document.querySelectorAll('img.thumb'))"
        ".map(i => i.complete && i.naturalWidth > 0)"
    )
    assert len(loaded) == 11 and all(loaded)
    screenshot = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    pixels = np.asarray(screenshot)
    assert pixels.shape[0] > 500 and pixels.shape[1] > 800
    not_white = (pixels < 240).any(axis=2).mean()
    colours = len(np.unique(pixels.reshape(-1, 3)[::7], axis=0))
    assert not_white > 0.05, not_white  # text, table, plots and thumbnails drawn
    assert colours > 50, colours
    (tmp_path / "index.png").write_bytes(driver.get_screenshot_as_png())

    # a click opens a video's page, with its grid, animation and frozen predictions
    link = driver.find_element(By.CSS_SELECTOR, "#videos tbody tr td a")
    name = link.text
    link.click()
    assert "/videos/" in driver.current_url
    assert driver.find_element(By.TAG_NAME, "h1").text == name
    images = driver.execute_script(
        "return ['grid', 'animation'].map(id => document.getElementById(id).naturalWidth)"
    )
    assert all(width > 0 for width in images)
    assert len(driver.find_elements(By.CSS_SELECTOR, "table.frozen td")) == 16
    assert severe(driver) == []
    # and the class page from there
    driver.find_element(By.CSS_SELECTOR, "table.facts a").click()
    assert "/classes/" in driver.current_url
    assert severe(driver) == []
    json.loads((out / "summary.json").read_text())
