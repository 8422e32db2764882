"""The demo page end to end in a real browser: scripts/demo_app.py serves two tiny saved models on 127.0.0.1 and
headless Chromium (driven by Selenium through the system's chromedriver) uploads images, reads the predicted label
and clicks the patch grid. Screenshots of each step go to the test's temporary folder.

Needs the test extra (`pip install -e ".[test]"`: gradio and selenium) and
`apt-get install -y chromium chromium-driver`; .ci/run installs both.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from hub_helpers import save_tiny_checkpoint
from PIL import Image
from transformers import pipeline

from lape_hf.demo import DEMO_EXTRA_MISSING
from lape_hf.demo.core import example_images

pytestmark = pytest.mark.slow

pytest.importorskip("gradio", reason=DEMO_EXTRA_MISSING)
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CHROMIUM = shutil.which("chromium")
CHROMEDRIVER = shutil.which("chromedriver")
if CHROMIUM is None or CHROMEDRIVER is None:
    pytest.skip("no chromium/chromedriver: apt-get install -y chromium chromium-driver", allow_module_level=True)

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "demo_app.py"
START_TIMEOUT = 180  # seconds for the app to load the models and answer (two busy cores)
EVENT_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_page(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"the app exited with status {process.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the app did not answer at {url} within {START_TIMEOUT} s:\n{log.read_text()}")


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("demo_models")
    return save_tiny_checkpoint(root / "lape"), save_tiny_checkpoint(root / "add", pe_join="add")


@pytest.fixture(scope="module")
def app_url(models: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The app in a subprocess, offline, with analytics off; stopped (by its own process id) after the tests."""
    root = tmp_path_factory.mktemp("demo_app")
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "GRADIO_TEMP_DIR": str(root)}
    log = root / "app.log"
    command = [sys.executable, str(SCRIPT), "--model", str(models[0]), "--compare", str(models[1]), "--port", str(port)]
    with log.open("w") as output:
        process = subprocess.Popen(command, env=env, stdout=output, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/"
    try:
        wait_for_page(url, process, log)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def browser(app_url: str) -> Iterator[webdriver.Chrome]:
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        driver.get(app_url)
        WebDriverWait(driver, EVENT_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#input-image"))
        yield driver
    finally:
        driver.quit()


def upload(driver, path: Path) -> None:
    driver.find_element(By.CSS_SELECTOR, "#input-image input[type=file]").send_keys(str(path))


def shown_label(driver, index: int = 0) -> str:
    found = driver.find_elements(By.CSS_SELECTOR, f"#prediction-{index} [data-testid=label-output-value]")
    return found[0].text if found else ""


def toast_text(driver) -> str:
    return " ".join(element.text for element in driver.find_elements(By.CSS_SELECTOR, "[data-testid=toast-body]"))


def save_picture(path: Path, seed: int) -> Path:
    pixels = np.random.default_rng(seed).integers(0, 256, size=(40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path)
    return path


def test_an_uploaded_image_shows_the_label_the_pipeline_gives(
    browser, models: tuple[Path, Path], tmp_path: Path
) -> None:
    picture = save_picture(tmp_path / "picture.png", seed=3)
    expected = [pipeline("image-classification", model=str(model))(str(picture))[0]["label"] for model in models]
    upload(browser, picture)
    WebDriverWait(browser, EVENT_TIMEOUT).until(lambda d: shown_label(d, 0) and shown_label(d, 1))
    browser.save_screenshot(str(tmp_path / "classify.png"))
    assert [shown_label(browser, 0), shown_label(browser, 1)] == expected


def test_picking_an_example_shows_its_label(browser, models: tuple[Path, Path]) -> None:
    path, true_label = example_images()[0]
    expected = pipeline("image-classification", model=str(models[0]))(str(path))[0]["label"]
    button = next(b for b in browser.find_elements(By.TAG_NAME, "button") if b.text == f"true label: {true_label}")
    button.click()
    WebDriverWait(browser, EVENT_TIMEOUT).until(lambda d: shown_label(d, 0) == expected)


def test_a_file_that_is_not_an_image_or_too_large_is_a_message_and_the_page_keeps_working(
    browser, models: tuple[Path, Path], tmp_path: Path
) -> None:
    fake = tmp_path / "notes.png"
    fake.write_text("this is not an image")
    upload(browser, fake)
    WebDriverWait(browser, EVENT_TIMEOUT).until(lambda d: "notes.png is not an image" in toast_text(d))
    browser.save_screenshot(str(tmp_path / "not_an_image.png"))
    assert "Traceback" not in browser.page_source

    huge = tmp_path / "huge.png"
    Image.new("1", (9000, 6000)).save(huge)  # 54 megapixels, a small file
    browser.find_element(By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']").click()
    upload(browser, huge)
    WebDriverWait(browser, EVENT_TIMEOUT).until(lambda d: "megapixels" in toast_text(d))
    assert "9000x6000" in toast_text(browser)

    browser.find_element(By.CSS_SELECTOR, "#input-image button[aria-label='Remove Image']").click()
    picture = save_picture(tmp_path / "picture.png", seed=4)
    upload(browser, picture)
    expected = pipeline("image-classification", model=str(models[0]))(str(picture))[0]["label"]
    WebDriverWait(browser, EVENT_TIMEOUT).until(lambda d: shown_label(d, 0) == expected)


def test_clicking_a_patch_redraws_the_maps_for_that_patch(browser, tmp_path: Path) -> None:
    tab = next(b for b in browser.find_elements(By.CSS_SELECTOR, "button[role=tab]") if "Position" in b.text)
    tab.click()
    WebDriverWait(browser, EVENT_TIMEOUT).until(lambda d: d.find_elements(By.CSS_SELECTOR, "#pe-figure img"))
    before = browser.find_element(By.CSS_SELECTOR, "#pe-figure img").get_attribute("src")
    browser.save_screenshot(str(tmp_path / "position_embedding_centre.png"))
    grid = browser.find_element(By.CSS_SELECTOR, "#patch-grid img")
    width, height = grid.size["width"], grid.size["height"]
    # The tiny models' grid is 4x4 and the default is the centre patch (2, 2): click the centre of the square of
    # row 1, column 2 (offsets are from the image's centre), which a wrong scale or offset would miss.
    row, column = 1, 2
    x, y = (column + 0.5) * width / 4 - width / 2, (row + 0.5) * height / 4 - height / 2
    ActionChains(browser).move_to_element_with_offset(grid, round(x), round(y)).click().perform()
    WebDriverWait(browser, EVENT_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#pe-figure img").get_attribute("src") != before
    )
    assert chosen_patch(browser) == ["1", "2"]
    browser.save_screenshot(str(tmp_path / "position_embedding_patch_1_2.png"))
    all_layers = browser.find_element(By.CSS_SELECTOR, "#pe-figure img").get_attribute("src")
    browser.find_element(By.CSS_SELECTOR, "#all-layers input[type=checkbox]").click()  # one layer: the slider's
    WebDriverWait(browser, EVENT_TIMEOUT).until(
        lambda d: d.find_element(By.CSS_SELECTOR, "#pe-figure img").get_attribute("src") != all_layers
    )
    browser.save_screenshot(str(tmp_path / "position_embedding_one_layer.png"))
    assert chosen_patch(browser) == ["1", "2"]


def chosen_patch(driver) -> list[str]:
    """The row and column boxes' values."""
    return [
        driver.find_element(By.CSS_SELECTOR, f"#patch-{name} input").get_attribute("value")
        for name in ("row", "column")
    ]
