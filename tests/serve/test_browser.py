"""The serve page in a real browser (headless Chromium through Selenium, a fake microphone
playing a WAV of the bundled example):
it loads offline from the server, streams the microphone, plays and records the
accompaniment, and ends with downloads. Skipped only where Chromium or its driver is not
installed (`scripts/setup.sh` installs both)."""

from __future__ import annotations

import json
import shutil
import urllib.request

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(not (CHROMIUM and DRIVER),
                                reason="chromium and chromedriver are not installed")


def microphone_wav(folder) -> str:
    """The bundled example (a band without its bass), 12 s at 48 kHz, as the WAV Chromium's
    fake microphone plays."""
    from importlib.resources import files

    from stemstream import audio

    example = files("stemstream") / "assets" / "examples" / "band_without_bass.flac"
    wave = audio.load(str(example), sample_rate=48000, channels=1)
    path = folder / "microphone.wav"
    audio.save(path, wave.samples[:, : 12 * 48000], 48000)
    return str(path)


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    wav = microphone_wav(tmp_path_factory.mktemp("microphone"))
    for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                 "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                 f"--use-file-for-fake-audio-capture={wav}",
                 "--autoplay-policy=no-user-gesture-required"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver, condition, seconds: float, what: str):
    from selenium.webdriver.support.ui import WebDriverWait

    try:
        return WebDriverWait(driver, seconds, poll_frequency=0.2).until(condition)
    except Exception as err:
        logs = driver.execute_script("return document.body.innerText")
        raise AssertionError(f"timed out waiting for {what}; page says: {logs}") from err


def test_the_page_streams_the_microphone_and_offers_the_results(served_url, browser):
    from selenium.webdriver.common.by import By

    server = served_url
    browser.get(server + "/")
    _wait(browser, lambda d: d.find_element(By.ID, "start-mic").is_enabled(), 30,
          "the page to load /health")
    names = [o.text for o in browser.find_elements(By.CSS_SELECTOR, "#instrument option")]
    assert "Bass" in names
    browser.find_element(By.ID, "start-mic").click()
    _wait(browser, lambda d: d.execute_script("return window.stemstream.received") > 4800,
          60, "accompaniment to arrive")
    assert browser.execute_script("return document.body.dataset.state") == "streaming"
    browser.find_element(By.ID, "stop").click()
    _wait(browser, lambda d: d.execute_script("return document.body.dataset.state") == "done",
          60, "the stream to end")
    counts = browser.execute_script("return window.stemstream")
    assert counts["sent"] > 0 and counts["received"] == counts["sent"], counts
    assert not browser.find_element(By.ID, "error").text
    for link in ("download-stem", "download-mix"):
        href = browser.find_element(By.ID, link).get_attribute("href")
        assert href and href.startswith("blob:"), (link, href)
    stats = browser.find_element(By.ID, "stats").text
    assert "RTF" in stats or "rtf" in stats.lower(), stats
    health = json.loads(urllib.request.urlopen(f"{server}/health").read())
    assert health["sessions"] == 0
