"""A real headless Chromium for the tests, driven by Selenium: Debian's `chromium` and `chromedriver`.

`.ci/run` installs them (`apt-get install chromium chromium-driver`); where they are absent, `missing()`
says what is, and the browser tests skip with that reason. The flags keep Chromium off the network it
cannot reach here (background updates, sync, QUIC) and out of the GPU and sandbox a container lacks.
"""

from __future__ import annotations

import importlib.util
import shutil
import tempfile
import time

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMEDRIVER = shutil.which("chromedriver") or "/usr/bin/chromedriver"
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--window-size=1600,1200")


def missing() -> str | None:
    """Why no browser test can run here, or None when one can."""
    if importlib.util.find_spec("selenium") is None:
        return "selenium is not installed (pip install -e '.[test]')"
    for path, package in ((CHROMIUM, "chromium"), (CHROMEDRIVER, "chromium-driver")):
        if not shutil.which(path):
            return f"{path} not found (Debian: apt-get install {package})"
    return None


class Browser:
    """One Chromium session; `page(url)` opens a page, `wait_for_text` / `wait_for_image` wait on what it renders."""

    def __init__(self, timeout: float = 180):
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS:
            options.add_argument(flag)
        self._profile = tempfile.TemporaryDirectory(prefix="reelml-chromium-")
        options.add_argument(f"--user-data-dir={self._profile.name}")
        self.driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
        self.driver.set_page_load_timeout(timeout)
        self.timeout = timeout  # a React page on a loaded 2-core machine: generous, the wait ends as soon as it renders

    def close(self):
        try:
            self.driver.quit()
        finally:
            self._profile.cleanup()

    def page(self, url: str) -> None:
        self.driver.get(url)

    def text(self) -> str:
        return self.driver.execute_script("return document.body ? document.body.innerText : ''")

    def wait_for_text(self, *wanted: str) -> str:
        """Waits until the page's visible text holds every string of `wanted`; returns that text."""
        return self._wait(lambda: (lambda t: t if all(w in t for w in wanted) else None)(self.text()),
                          f"text {wanted!r}")

    def click_text(self, text: str) -> None:
        """Clicks the innermost visible element whose text is exactly `text` (waiting for it to render)."""
        xpath = f"//*[normalize-space(text())={text!r}]"
        element = self._wait(lambda: next((e for e in self.driver.find_elements("xpath", xpath) if e.is_displayed()), None),
                             f"element {text!r}")
        element.click()

    def wait_for_image(self, min_width: int = 100) -> int:
        """Waits until the page shows a decoded image at least `min_width` pixels wide; returns its width."""
        script = "return Math.max(0, ...Array.from(document.images).map(i => i.complete ? i.naturalWidth : 0))"
        return self._wait(lambda: (lambda w: w if w >= min_width else None)(self.driver.execute_script(script)),
                          f"an image >= {min_width} px wide")

    def _wait(self, probe, what):
        deadline = time.monotonic() + self.timeout
        while True:
            found = probe()
            if found:
                return found
            if time.monotonic() > deadline:
                path = tempfile.mktemp(prefix="reelml-browser-", suffix=".png")
                self.driver.save_screenshot(path)
                raise AssertionError(f"{self.driver.current_url}: no {what} after {self.timeout:.0f} s "
                                     f"(screenshot {path}); the page shows:\n{self.text()[:3000]}")
            time.sleep(0.5)
