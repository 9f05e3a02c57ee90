"""Headless Chromium for the browser tests and ``benchmarks/web.py``: Debian's ``chromium`` + ``chromium-driver``
(``apt-get install -y chromium chromium-driver``) driven by Selenium; nothing is downloaded (the driver is given
by path, so Selenium Manager never runs)."""

from __future__ import annotations

import base64
import shutil
from pathlib import Path

import numpy as np

CHROMEDRIVER = Path("/usr/bin/chromedriver")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--autoplay-policy=no-user-gesture-required",
         "--disable-features=WebRtcHideLocalIpsWithMdns", "--mute-audio")


def chromedriver_path() -> Path | None:
    if CHROMEDRIVER.is_file():
        return CHROMEDRIVER
    found = shutil.which("chromedriver")
    return Path(found) if found else None


def chrome(window: tuple[int, int] = (1280, 800), extra_flags: list[str] | tuple[str, ...] = ()):
    """A headless Chromium WebDriver (caller quits it); ``extra_flags`` are added to ``FLAGS``."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver_path = chromedriver_path()
    if driver_path is None:
        from spatia.world.errors import InvalidInputError

        raise InvalidInputError("chromedriver not found: apt-get install -y chromium chromium-driver")
    opts = webdriver.ChromeOptions()
    for flag in (*FLAGS, *extra_flags):
        opts.add_argument(flag)
    opts.add_argument(f"--window-size={window[0]},{window[1]}")
    return webdriver.Chrome(service=Service(executable_path=str(driver_path)), options=opts)


def data_url_rgb(url: str) -> np.ndarray:
    """``data:image/png;base64,...`` -> [H, W, 3] uint8."""
    import cv2

    raw = base64.b64decode(url.split(",", 1)[1])
    bgr = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_COLOR)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def psnr_db(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)
