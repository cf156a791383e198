#!/usr/bin/env python
"""Drive the browser demo (demo/app.py) in a real, headless Chromium: load the page, upload an
image, wait for its overlay, save a screenshot, and list any request the page made to another
host than the demo's (it should make none: the page works offline).

    python demo/app.py --config-file configs/demo_synthetic.yaml \
        --opts MODEL.WEIGHTS output/demo_synthetic/model_final.pth &
    python tools/app_screenshot.py --url http://127.0.0.1:7860 \
        --image datasets/synthetic_shapes/images/val/0003.png --output app.png

Chromium runs with every other host unresolvable, so a page that needs the network would show
it. Needs Debian's ``chromium`` and ``chromium-driver`` (``apt-get install chromium
chromium-driver``) and ``selenium`` (``pip install selenium``); the test of the demo
(tests/test_app.py) runs this too.
"""

import argparse
import json
import os
import shutil
import sys
from typing import Dict, List, Optional, Tuple
from urllib.parse import urlparse

INSTALL_HINT = (
    "a headless Chromium is needed: apt-get install chromium chromium-driver (Debian, Ubuntu: "
    "chromium-browser), and pip install selenium"
)
WINDOW = (1280, 1000)  # the browser's window, in CSS pixels (the screenshot: the whole page)


def chromium() -> Optional[Tuple[str, str]]:
    """(browser, driver) executables of a system Chromium, or None where either is missing or
    selenium is not installed."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    driver = shutil.which("chromedriver")
    try:
        import selenium  # noqa: F401
    except ImportError:
        return None
    return (browser, driver) if browser and driver else None


def open_browser(url: str, window: Tuple[int, int] = WINDOW):
    """A headless Chromium (selenium's ``webdriver.Chrome``) in which only the host of ``url``
    resolves, recording the page's network requests."""
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    found = chromium()
    if found is None:
        raise RuntimeError(INSTALL_HINT)
    browser, driver = found
    host = urlparse(url).hostname
    options = Options()
    options.binary_location = browser
    for arg in [
        "--headless=new",
        "--no-sandbox",  # as root (CI)
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        f"--window-size={window[0]},{window[1]}",
        f"--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE {host}",
    ]:
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"performance": "ALL"})
    return webdriver.Chrome(service=Service(executable_path=driver), options=options)


def requested_urls(driver) -> List[str]:
    """The URLs the page requested so far (Chromium's performance log, read once)."""
    urls = []
    for entry in driver.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.append(message["params"]["request"]["url"])
    return urls


def save_whole_page(driver, output: str, palette: bool = False) -> None:
    """A PNG screenshot of the whole page, its full height (``palette``: 128 colours, a smaller
    file for the docs)."""
    width = driver.execute_script("return window.innerWidth")
    height = driver.execute_script("return document.documentElement.scrollHeight")
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
    )
    driver.save_screenshot(output)
    if palette:
        from PIL import Image

        with Image.open(output) as shot:
            shot.convert("RGB").quantize(128).save(output, optimize=True)


def upload_and_capture(
    url: str, image: str, output: str, timeout: float = 60.0, palette: bool = False
) -> Dict:
    """Load the page at ``url``, upload ``image``, wait until the refined overlay and the legend
    appear, and save a screenshot of the whole page to ``output`` (PNG; ``palette``: 128
    colours).

    Returns:
        "overlay": (width, height) of the refined overlay as the browser decoded it;
        "legend": the text of the legend; "facts": the line of facts;
        "external": the requests the page made to other hosts than the demo's (data: and blob:
        URLs are not requests).

    Raises:
        selenium's TimeoutException: the overlay did not appear within ``timeout`` seconds.
    """
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    driver = open_browser(url)
    try:
        driver.get(url)
        wait = WebDriverWait(driver, timeout)
        upload = wait.until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "#input-image input[type=file]"))
        )
        upload.send_keys(os.path.abspath(image))
        overlay = wait.until(
            EC.visibility_of_element_located((By.CSS_SELECTOR, "#refined img[src]"))
        )
        wait.until(lambda d: d.execute_script("return arguments[0].naturalWidth", overlay) > 0)
        legend = wait.until(
            EC.visibility_of_element_located((By.CSS_SELECTOR, "#legend table"))
        ).text
        size = driver.execute_script(
            "return [arguments[0].naturalWidth, arguments[0].naturalHeight]", overlay
        )
        facts = driver.find_element(By.CSS_SELECTOR, "#facts").text
        wait.until(  # the progress overlays of the outputs have gone
            lambda d: not d.find_elements(By.CSS_SELECTOR, ".wrap.full:not(.hide)")
        )
        save_whole_page(driver, output, palette)
        origin = "{0.scheme}://{0.netloc}".format(urlparse(url))
        external = [
            u for u in requested_urls(driver) if not u.startswith((origin, "data:", "blob:"))
        ]
        return {"overlay": tuple(size), "legend": legend, "facts": facts, "external": external}
    finally:
        driver.quit()


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:7860", help="the demo's address")
    parser.add_argument("--image", required=True, help="the image to upload")
    parser.add_argument("--output", required=True, help="the screenshot to write (PNG)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds to wait (60)")
    parser.add_argument(
        "--palette", action="store_true", help="save with 128 colours: a smaller file, for docs"
    )
    args = parser.parse_args(argv)
    if chromium() is None:
        print(f"error: {INSTALL_HINT}", file=sys.stderr)
        return 1
    from selenium.common.exceptions import TimeoutException, WebDriverException

    try:
        result = upload_and_capture(args.url, args.image, args.output, args.timeout, args.palette)
    except TimeoutException:
        print(
            f"error: {args.url}: the page, or the overlay of {args.image}, did not appear within "
            f"{args.timeout:g} s (--timeout): is demo/app.py serving there, is it an image?",
            file=sys.stderr,
        )
        return 1
    except WebDriverException as e:
        print(f"error: {args.url}: {(e.msg or type(e).__name__).splitlines()[0]}", file=sys.stderr)
        return 1
    print(f"overlay {result['overlay'][0]}x{result['overlay'][1]}; {result['facts']}")
    print(f"legend: {' | '.join(result['legend'].splitlines())}")
    print(f"requests to other hosts: {result['external'] or 'none'}")
    print(f"wrote {args.output}")
    return 1 if result["external"] else 0


if __name__ == "__main__":
    sys.exit(main())
