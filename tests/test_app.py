"""python -m usam.app in a real headless browser: Debian's chromium driven by selenium.

The page is served on the loopback with a random-weight tiny SAM 2 (256 px) and published-shape
estimators. The test clicks a point on the image, reads the point and the estimates from the
page, checks them against UncertainSAM.predict on the same image and point, and saves a
screenshot (also to $USAM_SCREENSHOT when set: that is how docs/app.png is made); then it adds
a background point through the mode radio and checks the two-point answer. Skips, with the
reason, when gradio, selenium, chromium or chromedriver is missing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket

import numpy as np
import pytest
from published import write_published

from usam.app import Prompt, build, recommended, sample_images, table_html
from usam.datasets.base import read_rgb
from usam.inference import Prediction, UncertainSAM

CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")
SEEDS = {"iou_tiny": 41, "iou_unsupervised": 42, "task_gap": 43}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def browser():
    pytest.importorskip(
        "selenium", reason='the browser test needs selenium: pip install -e ".[dev]"'
    )
    if CHROMIUM is None or DRIVER is None:
        pytest.skip(
            "the browser test needs Debian's chromium and chromedriver: "
            "apt-get install -y chromium chromium-driver"
        )
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in [
        "--headless=new",
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--window-size=1400,1250",
    ]:
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


@pytest.fixture
def page(compose_cfg, tmp_path, monkeypatch):
    monkeypatch.setenv("GRADIO_ANALYTICS_ENABLED", "False")  # no calls home from the test
    pytest.importorskip("gradio", reason='the web app needs gradio: pip install -e ".[app]"')
    folder = write_published(tmp_path / "UncertainSAM", "sam2.1", SEEDS)
    cfg = compose_cfg(
        "app",
        [
            "sam_model=random",
            "sam_model.image_size=256",
            "sam_model.device=cpu",
            "sam_model.sizes=[tiny]",
            f"estimators=[{folder}]",
        ],
    )
    demo = build(cfg)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    yield f"http://127.0.0.1:{port}/", folder
    demo.close()


def test_click_points_and_read_the_estimates_from_the_page(browser, page, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as ec
    from selenium.webdriver.support.ui import WebDriverWait

    url, folder = page
    browser.get(url)
    wait = WebDriverWait(browser, 300)  # the first click builds SAM 2 on a loaded 2-core CPU
    img = wait.until(ec.visibility_of_element_located((By.CSS_SELECTOR, "#usam-canvas img")))
    assert "no prompt yet" in browser.find_element(By.ID, "usam-prompt").text
    # a click left of and above the image's centre: on the sample's ellipse
    ActionChains(browser).move_to_element_with_offset(
        img, -img.size["width"] // 5, -img.size["height"] // 6
    ).click().perform()
    wait.until(ec.presence_of_element_located((By.CSS_SELECTOR, "#usam-estimates td")))
    prompt = browser.find_element(By.ID, "usam-prompt").text
    x, y = map(int, re.fullmatch(r"\((\d+), (\d+)\) fg", prompt).groups())
    cells = read_table(browser)
    banner = browser.find_element(By.ID, "usam-banner").text
    recommended = browser.find_element(By.CSS_SELECTOR, "#usam-estimates tr.usam-recommended").text
    shot = tmp_path / "app.png"
    browser.save_screenshot(str(shot))
    if os.environ.get("USAM_SCREENSHOT"):
        shutil.copyfile(shot, os.environ["USAM_SCREENSHOT"])

    # the same image and point through the Python API
    usam = UncertainSAM.from_pretrained(
        None, estimators=folder, size="tiny", random_weights=True, image_size=256, device="cpu"
    )
    image = np.array(read_rgb(next(iter(sample_images().values()))))
    assert 0 < x < image.shape[1] // 2 and 0 < y < image.shape[0] // 2  # where the click went
    usam.set_image(image)
    want = usam.predict(point_coords=[[x, y]], point_labels=[1])
    for j in range(3):
        assert cells[(j, "sam_score")] == pytest.approx(float(want.scores[j]), abs=6e-4)
        for target, values in want.estimates.items():
            assert cells[(j, target)] == pytest.approx(float(values[j]), abs=6e-4)
    assert sorted({t for _, t in cells}) == sorted(
        ["sam_score", "iou_tiny", "unsupervised_iou", "task_gap"]
    )
    best = int(np.argmax(want.estimates["iou_tiny"]))  # iou_<size> decides when loaded
    assert recommended.startswith(f"mask {best} (recommended)")
    assert "RANDOM weights" in banner
    assert shot.stat().st_size > 10_000

    # background mode, a second click right of and below the centre: a two-point prompt
    browser.find_element(
        By.XPATH, "//*[@id='usam-mode']//label[contains(., 'background point')]"
    ).click()
    ActionChains(browser).move_to_element_with_offset(
        img, img.size["width"] // 4, img.size["height"] // 5
    ).click().perform()
    wait.until(ec.text_to_be_present_in_element((By.ID, "usam-prompt"), "bg"))
    prompt = browser.find_element(By.ID, "usam-prompt").text
    m = re.fullmatch(r"\((\d+), (\d+)\) fg; \((\d+), (\d+)\) bg", prompt)
    x2, y2 = int(m.group(3)), int(m.group(4))
    assert x2 > image.shape[1] // 2 and y2 > image.shape[0] // 2
    want = usam.predict(point_coords=[[x, y], [x2, y2]], point_labels=[1, 0])
    cells = read_table(browser)
    for j in range(3):
        assert cells[(j, "sam_score")] == pytest.approx(float(want.scores[j]), abs=6e-4)
        for target, values in want.estimates.items():
            assert cells[(j, target)] == pytest.approx(float(values[j]), abs=6e-4)
    usam.sam.remove_hooks()


def read_table(browser) -> dict[tuple[int, str], float]:
    """{(mask, target): number} of the page's estimates table."""
    from selenium.webdriver.common.by import By

    return {
        (int(td.get_attribute("data-mask")), td.get_attribute("data-target")): float(td.text)
        for td in browser.find_elements(By.CSS_SELECTOR, "#usam-estimates td[data-target]")
    }


def test_clicks_make_points_and_a_box_from_two_corners():
    p = Prompt()
    p.add("foreground point", 10, 20)
    p.add("box corners", 50, 8)
    assert p.box is None and "click the opposite corner" in p.describe()
    p.add("background point", 3, 4)
    p.add("box corners", 30, 40)  # the opposite corner, up and left of the first
    assert p.box == [30, 8, 50, 40] and p.corner is None
    kw = p.kwargs()
    assert kw["point_coords"].tolist() == [[10, 20], [3, 4]] and kw["point_labels"].tolist() == [
        1,
        0,
    ]
    assert p.describe() == "(10, 20) fg; (3, 4) bg; box (30, 8, 50, 40)"


def test_the_recommended_mask_and_the_table_by_hand():
    pred = Prediction(
        masks=np.zeros((3, 2, 2), bool),
        scores=np.array([0.9, 0.5, 0.7], np.float32),
        low_res_logits=np.zeros((3, 1, 1), np.float32),
        estimates={
            "iou_small": np.array([0.2, 0.6, 0.4], np.float32),
            "task_gap": np.array([0.05, -0.1, 0.0], np.float32),
        },
    )
    assert recommended(pred, "small") == (1, "highest iou_small estimate")
    assert recommended(pred, "large") == (0, "highest SAM score")  # no iou_large loaded
    page = table_html(pred, 1, "highest iou_small estimate")
    assert '<td data-mask="2" data-target="sam_score">0.700</td>' in page
    assert '<td data-mask="1" data-target="task_gap">-0.100</td>' in page  # gaps signed
    assert (
        '<tr class="usam-recommended" style="background:#d9f5d9;font-weight:bold"><td>mask 1 (recommended)'
        in page
    )
    assert (
        page.count("usam-recommended") == 1 and "IoU lost by taking SAM&#x27;s top-scored" in page
    )


def test_run_serves_the_page_of_the_default_config(compose_cfg, monkeypatch, tmp_path):
    """`python -m usam.app` without overrides: SAM 2.1 from checkpoints (built on the first
    click, so the page opens without them) and the imported published estimators' folder."""
    gr = pytest.importorskip("gradio", reason='the web app needs gradio: pip install -e ".[app]"')
    from usam.app import run

    launches = []
    monkeypatch.setattr(gr.Blocks, "launch", lambda self, **kw: launches.append(kw))
    cfg = compose_cfg("app", [])
    assert cfg.sam_model.version == "sam2.1" and not cfg.sam_model.random_weights
    summary = run(cfg)
    assert launches == [
        {"server_name": "127.0.0.1", "server_port": 7860, "share": False, "quiet": False}
    ]
    assert summary["estimators"] == ["models/published/sam2.1"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary
