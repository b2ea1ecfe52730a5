"""A real browser on the real server: headless Chromium (OS package) driven by Selenium loads the page
from an `etp-search serve` subprocess on the example store, searches, opens a plot and uploads a record.

Where Chromium or Selenium is missing the test skips, except when ETP_REQUIRE_BROWSER=1 (set by
.ci/run, which installs the browser first): then a missing browser is a failure, never a silent skip.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.serve_browser import DARK_PIXELS_JS, browser_missing, chromium, close_chromium, start_server, stop_server

REC_DIR = Path(__file__).resolve().parents[1] / "etp_search" / "examples" / "ptbxl" / "records100" / "00000"
REQUIRED = os.environ.get("ETP_REQUIRE_BROWSER") == "1"


@pytest.fixture(scope="module")
def browser():
    why = browser_missing()
    if why:
        if REQUIRED:
            pytest.fail(f"ETP_REQUIRE_BROWSER=1 but {why}")
        pytest.skip(why)
    driver, profile = chromium()
    yield driver
    close_chromium(driver, profile)


@pytest.fixture(scope="module")
def server(example_store: Path):
    pytest.importorskip("uvicorn")
    proc, url = start_server(example_store)
    yield url
    stop_server(proc)


@pytest.mark.slow
def test_search_plot_and_upload_in_a_real_browser(browser, server: str, tmp_path: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    d, wait = browser, WebDriverWait(browser, 60)
    drawn = "#results canvas.thumb[data-drawn='1']"
    d.get(server + "/")
    wait.until(lambda d: "50 ECGs" in d.find_element(By.ID, "status").text)

    # keyboard: "/" focuses the search box, Enter searches
    d.find_element(By.TAG_NAME, "body").send_keys("/")
    assert d.switch_to.active_element.get_attribute("id") == "q"
    d.switch_to.active_element.send_keys("atrial fibrillation", Keys.ENTER)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, drawn)) == 10)
    cards = d.find_elements(By.CSS_SELECTOR, "#results .card")
    assert len(cards) == 10 and "score" in cards[0].text and cards[0].find_element(By.CSS_SELECTOR, ".report").text
    assert "atrial" in cards[0].text.lower()  # the top hit of the shipped checkpoint is an AF/flutter record
    assert d.execute_script(DARK_PIXELS_JS, "#results canvas.thumb") > 500  # traces were really drawn
    d.save_screenshot(str(tmp_path / "search.png"))

    # keyboard: Enter on a focused card opens its record with the full ECG-paper plot
    first_id = cards[0].get_attribute("data-id")
    cards[0].send_keys(Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "rec-plot").get_attribute("data-loaded") == "1")
    assert d.find_element(By.ID, "rec-title").text == f"Record {first_id}"
    assert d.execute_script("return document.getElementById('rec-plot').naturalWidth") > 800
    ActionChains(d).send_keys(Keys.ESCAPE).perform()  # Esc closes the record view
    wait.until(lambda d: not d.find_element(By.ID, "record").get_attribute("open"))

    # search by example: upload a WFDB pair through the file input
    d.find_element(By.ID, "file").send_keys(f"{REC_DIR / '00009_lr.hea'}\n{REC_DIR / '00009_lr.dat'}")
    wait.until(lambda d: "00009_lr" in d.find_element(By.ID, "query-title").text)
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, drawn)) == 10)
    first = d.find_element(By.CSS_SELECTOR, "#results .card")
    assert first.get_attribute("data-id") == "9"  # the uploaded copy finds its own stored record first
    assert d.execute_script(DARK_PIXELS_JS, "#query-thumb") > 500

    # zero-shot panel scores the uploaded ECG
    d.find_element(By.ID, "zs-button").click()
    wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#zs-results li")) == 4)
    assert "%" in d.find_element(By.ID, "zs-results").text

    # an error shows as one line on the page, not a broken page
    d.find_element(By.ID, "where").send_keys("nosuchcolumn=1")
    q = d.find_element(By.ID, "q")
    q.clear()
    q.send_keys("sinus rhythm", Keys.ENTER)
    wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
    assert "unknown column 'nosuchcolumn'" in d.find_element(By.ID, "error").text
    severe = [e for e in d.get_log("browser") if e["level"] == "SEVERE" and "400" not in e["message"]]
    assert not severe, severe


@pytest.mark.slow
def test_page_asks_for_the_token_and_then_works(browser, example_store: Path) -> None:
    """A server started with a token (from ETP_SERVE_TOKEN, so it is not on the command line): the page
    loads, its API calls get 401, it shows the token field, and with the token thumbnails and plots load."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    pytest.importorskip("uvicorn")
    proc, url = start_server(example_store, env={"ETP_SERVE_TOKEN": "browser-test-token"})
    try:
        d, wait = browser, WebDriverWait(browser, 60)
        d.get(url + "/")
        d.execute_script("sessionStorage.clear()")
        d.refresh()
        wait.until(lambda d: d.find_element(By.ID, "token-form").is_displayed())
        assert "bearer token" in d.find_element(By.ID, "status").text
        d.find_element(By.ID, "token").send_keys("browser-test-token", Keys.ENTER)
        wait.until(lambda d: "50 ECGs" in d.find_element(By.ID, "status").text)
        assert not d.find_element(By.ID, "token-form").is_displayed()
        d.find_element(By.ID, "q").send_keys("sinus rhythm", Keys.ENTER)
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#results canvas.thumb[data-drawn='1']")) == 10)
        d.find_element(By.CSS_SELECTOR, "#results .card button.open").click()
        wait.until(lambda d: d.find_element(By.ID, "rec-plot").get_attribute("data-loaded") == "1")
    finally:
        stop_server(proc)
