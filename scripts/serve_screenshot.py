"""A screenshot of the serve page during a session, for docs/serve.md: starts `stemstream
serve` on a free port, opens the page in headless Chromium whose fake microphone plays the
bundled example (a band without its bass), streams for ``--seconds`` and saves the page.

    python scripts/serve_screenshot.py [--model default-live] [--seconds 10] [--out docs/serve.png]
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default-live")
    parser.add_argument("--route", default="auto")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--out", type=Path, default=Path("docs/serve.png"))
    args = parser.parse_args()
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "serve"))
    from test_browser import microphone_wav  # the browser test's fake microphone

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "stemstream.cli", "serve", "--model", args.model, "--port",
         str(port), "--route", args.route], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):  # a first run exports the model (about a minute)
            try:
                urllib.request.urlopen(f"{url}/health", timeout=1).close()
                break
            except OSError:
                if server.poll() is not None:
                    sys.exit(server.stdout.read())
                time.sleep(0.5)
        with tempfile.TemporaryDirectory() as folder:
            options = webdriver.ChromeOptions()
            options.binary_location = shutil.which("chromium") or shutil.which(
                "chromium-browser")
            for flag in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage",
                         "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                         f"--use-file-for-fake-audio-capture={microphone_wav(Path(folder))}",
                         "--autoplay-policy=no-user-gesture-required",
                         "--window-size=1280,1000"):
                options.add_argument(flag)
            driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")),
                                      options=options)
            try:
                driver.get(url + "/")
                deadline = time.time() + 30
                while not driver.find_element(By.ID, "start-mic").is_enabled():
                    if time.time() > deadline:
                        sys.exit("the page did not load /health")
                    time.sleep(0.2)
                driver.find_element(By.ID, "start-mic").click()
                time.sleep(args.seconds)
                args.out.parent.mkdir(parents=True, exist_ok=True)
                driver.save_screenshot(str(args.out))
                print(f"wrote {args.out}: {driver.find_element(By.ID, 'stats').text!r}")
            finally:
                driver.quit()
    finally:
        server.terminate()
        server.wait(timeout=30)


if __name__ == "__main__":
    main()
