"""Headless Chromium (Debian's chromium + chromium-driver, driven by selenium) for the UI tests, and
what a person does in the Prefect run form: find a field by its title, change it, submit."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# This machine's closed network: no background connections, nothing fetched at start.
FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--disable-dev-shm-usage", "--window-size=1400,2600",
)  # fmt: skip


def missing() -> str | None:
    """Why no browser can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install -e '.[dev]')"
    for path in (CHROMIUM, CHROMEDRIVER):
        if not Path(path).is_file() and not shutil.which(Path(path).name):
            return f"{path} not found: Debian's chromium and chromium-driver (`make browser`)"
    return None


def start(profile: Path):
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)  # no driver download
    driver.set_page_load_timeout(60)
    return driver


def wait_for(driver, css: str, timeout_s: float = 60):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions
    from selenium.webdriver.support.ui import WebDriverWait

    present = expected_conditions.presence_of_element_located((By.CSS_SELECTOR, css))
    return WebDriverWait(driver, timeout_s).until(present)


def field(driver, title: str):
    """The run form's field whose title starts with `title` (e.g. "Training: training epochs")."""
    from selenium.webdriver.common.by import By

    xpath = (
        f"//span[contains(@class, 'schema-form-property__label') and starts-with(normalize-space(.), \"{title}\")]"
        "/ancestor::div[contains(concat(' ', normalize-space(@class), ' '), ' schema-form-property ')][1]"
        "/div[contains(@class, 'p-label__body')]"
    )
    found = driver.find_elements(By.XPATH, xpath)
    if len(found) != 1:
        raise AssertionError(f"{len(found)} form fields titled {title!r}")
    return found[0]


def fill(driver, title: str, value) -> None:
    """Set a field as a person would: type into a text or number box, pick an option, flip a toggle."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    body = field(driver, title)
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", body)
    if isinstance(value, bool):
        switch = body.find_element(By.CSS_SELECTOR, "[role=switch]")
        if (switch.get_attribute("aria-checked") == "true") != value:
            switch.click()
        for _ in range(50):  # the form re-renders the switch
            if (switch.get_attribute("aria-checked") == "true") == value:
                return
            time.sleep(0.1)
        raise AssertionError(f"{title}: the switch did not turn {'on' if value else 'off'}")
    choice = "select.p-native-select__control:not(.p-native-select__control--placeholder)"
    selects = body.find_elements(By.CSS_SELECTOR, choice)
    if selects:
        Select(selects[0]).select_by_value(str(value))
        return
    box = body.find_element(By.CSS_SELECTOR, "textarea, input")
    box.click()
    box.send_keys(Keys.CONTROL, "a")
    box.send_keys(Keys.DELETE)
    box.send_keys(str(value))
    time.sleep(0.1)


def submit(driver) -> None:
    from selenium.webdriver.common.by import By

    button = driver.find_element(By.CSS_SELECTOR, "form .p-form__footer button[type=submit]")
    driver.execute_script("arguments[0].scrollIntoView({block: 'center'})", button)
    button.click()


def page_text(driver) -> str:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.TAG_NAME, "body").text
