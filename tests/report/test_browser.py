"""Both HTML reports, opened in a real browser: every image decodes, the page is not blank, and
the figures of one target sit side by side.

Headless Chromium (Debian's `chromium` with its `chromium-driver`), driven through Selenium.
Without them the test skips, saying what is missing; CI sets MIMIR_REQUIRE_BROWSER=1
(.ci/run installs both), and there a missing browser fails the test instead.
"""

from __future__ import annotations

import io
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

#: Window of a laptop screen: wide enough for the four-column grid of the report's style.
WINDOW = (1280, 900)
#: Least standard deviation of a screenshot's grey levels: a blank (one-colour) page has 0.
MIN_PIXEL_SD = 10.0
#: Seconds a page may take to finish loading (a page of megabytes can return from get() early).
LOAD_SECONDS = 60

_IMAGES_SCRIPT = "return Array.from(document.images).map(image => [image.complete, image.naturalWidth]);"
_TARGET_ROWS_SCRIPT = """
return Array.from(document.querySelectorAll('article.target')).map(article => [
    article.id,
    Array.from(article.querySelectorAll('.grid img')).map(image => Math.round(image.getBoundingClientRect().top)),
]);
"""


def _unavailable(reason: str) -> None:
    """Skip with the reason, or fail where CI requires the browser (MIMIR_REQUIRE_BROWSER=1)."""
    if os.environ.get("MIMIR_REQUIRE_BROWSER") == "1":
        pytest.fail(f"MIMIR_REQUIRE_BROWSER=1 but {reason}")
    pytest.skip(reason)


def _executable(variable: str, *names: str) -> str | None:
    """An executable from `variable` in the environment, else the first of `names` on PATH."""
    return os.environ.get(variable) or next((found for name in names if (found := shutil.which(name))), None)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.common.exceptions import WebDriverException
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        _unavailable("selenium is not installed (pip install -e '.[test]')")
    chromium = _executable("MIMIR_CHROMIUM", "chromium", "chromium-browser")
    driver_path = _executable("MIMIR_CHROMEDRIVER", "chromedriver")
    if chromium is None or driver_path is None:
        _unavailable("no headless browser: install Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"):
        options.add_argument(argument)
    try:
        driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=options)
    except WebDriverException as error:
        _unavailable(f"{chromium} did not start through {driver_path}: {error.msg}")
    try:
        yield driver
    finally:
        driver.quit()


@pytest.mark.parametrize("kind", ["evaluation", "crossval"])
def test_report_loads_every_image_and_is_not_blank_in_chromium(browser, rendered_reports, kind):
    from selenium.webdriver.support.ui import WebDriverWait  # present: the browser fixture checked

    path: Path = rendered_reports[kind]
    expected_images = len(re.findall(r"<img ", path.read_text(encoding="utf-8")))
    browser.get(path.resolve().as_uri())
    WebDriverWait(browser, LOAD_SECONDS).until(lambda driver: driver.execute_script("return document.readyState") == "complete")
    assert browser.title.startswith("MIMIR")

    images = browser.execute_script(_IMAGES_SCRIPT)
    assert len(images) == expected_images >= 4
    assert [index for index, (complete, width) in enumerate(images) if not (complete and width > 0)] == []

    grey = np.asarray(Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("L"), dtype=np.float64)
    assert grey.shape[1] == WINDOW[0]
    assert grey.std() > MIN_PIXEL_SD

    if kind == "crossval":  # the cohort saliency maps of `crossval ... --explain` decode and take space
        width, height = browser.execute_script(
            "const image = document.querySelector('#section-cohort-maps img');"
            "return image ? [image.naturalWidth, image.getBoundingClientRect().height] : [0, 0];"
        )
        assert width > 0 and height > 100

    # The grid: at this width every target's figures share one row (one top edge), not one row each.
    rows = browser.execute_script(_TARGET_ROWS_SCRIPT)
    assert rows and all(len(set(tops)) == 1 for _, tops in rows if tops), rows
    assert max(len(tops) for _, tops in rows) >= 3
