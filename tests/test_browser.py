"""What a person opens first, in a real browser: the tiny pipeline's `reports/report.html` and the page
`dvc plots show` writes, rendered by headless Chromium (Debian's `chromium` and `chromium-driver`, which `make test`
installs when missing) through selenium, offline. Every family's table row, sample grid and curve must be there,
every image must decode, the DVC charts must be drawn (with the Vega scripts the project's template inlines: DVC's
own template loads them from a CDN, a blank page offline), and the console must hold no error."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from genlab.compare import FAMILIES
from tests.conftest import sh

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER), reason="needs chromium and chromedriver (`make test` "
                                "installs them: apt-get install chromium chromium-driver)")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    try:
        yield driver
    finally:
        driver.quit()


def _open(driver: object, page: Path, ready: str) -> list[dict]:
    """Load `page`, wait until the script `ready` returns true, and return the console's errors."""
    from selenium.webdriver.support.ui import WebDriverWait

    driver.get_log("browser")  # drop what an earlier page logged
    driver.get(page.as_uri())
    loaded = f"return document.readyState == 'complete' && ({ready})"
    WebDriverWait(driver, 30).until(lambda d: d.execute_script(loaded))
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


IMAGES_DECODED = "Array.from(document.images).every(i => i.complete)"


def test_report_shows_every_family_in_a_browser(repro: tuple[Path, dict[str, str], str], browser: object) -> None:
    root = repro[0]
    errors = _open(browser, root / "reports" / "report.html", IMAGES_DECODED)
    assert errors == []
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.alt, i.naturalWidth, i.naturalHeight])")
    assert images and all(w > 0 and h > 0 for _, w, h in images), images  # every picture decoded
    alts = [a for a, _, _ in images]
    assert [a for a in alts if a in FAMILIES] == [*FAMILIES, *FAMILIES]  # each family's samples, then its curve
    table_families = browser.execute_script(
        "const t = document.querySelector('table'); const head = Array.from(t.tHead.rows[0].cells)"
        ".map(c => c.innerText); const col = head.indexOf('family');"
        "return Array.from(t.tBodies[0].rows).map(r => r.cells[col].innerText)")
    assert set(FAMILIES) <= set(table_families)  # a row per family (beside the floor and prompt rows)


def test_dvc_plots_draw_offline(repro: tuple[Path, dict[str, str], str], browser: object) -> None:
    root, env = repro[0], repro[1]
    sh(["dvc", "plots", "show", "-o", "dvc_plots"], root, env)
    page = root / "dvc_plots" / "index.html"
    assert "cdn.jsdelivr" not in page.read_text()  # the project's template, not DVC's
    divs = "Array.from(document.querySelectorAll('body > div'))"  # one per plot; vegaEmbed draws into it
    drawn = f"{divs}.length > 0 && {divs}.every(d => d.querySelector('.mark-line path'))"
    errors = _open(browser, page, drawn)
    assert errors == []
    charts = browser.execute_script(
        f"return {divs}.map(d => [d.querySelector('.role-title-text')?.textContent,"
        "Array.from(d.querySelectorAll('.mark-line path')).map(p => p.getAttribute('d'))])")
    assert len(charts) >= 6
    for title, lines in charts:  # every chart draws its data: a line through points (a 1-point series is "M..Z")
        assert lines and all(lines) and any("L" in d for d in lines), (title, lines)
    titles = [title for title, _ in charts]
    for stage in ("train_evaluator", "train_vae", "train_ldm", "train_pixel", "train_gan"):
        assert f"plots/{stage}.csv" in titles
