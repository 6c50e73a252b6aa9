"""The HTML leaderboard in a real browser (headless Debian Chromium driven by Selenium): it loads
without console errors, sorts and filters, draws something, and hostile labels stay text.

`.ci/run` installs chromium and chromium-driver and sets PEFTBENCH_REQUIRE_BROWSER=1, so there a
missing browser is a failure; elsewhere these tests are skipped with the reason.
"""

from __future__ import annotations

import io
import json
import os
import shutil

import pytest
from conftest import hand_store, run_cli

from peftbench.report import build_report, write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
HOSTILE = ["<script>alert(1)</script>", '<img src=x onerror="window.__xss=1;alert(2)">']


@pytest.fixture(scope="module")
def browser():
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError:
        webdriver = None
    if not (CHROMIUM and DRIVER and webdriver):
        reason = "needs Debian's chromium and chromium-driver and the selenium package (.ci/run installs them)"
        if os.environ.get("PEFTBENCH_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    options = webdriver.ChromeOptions()
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--window-size=1400,1000"):
        options.add_argument(flag)
    options.binary_location = CHROMIUM
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(driver, path):
    driver.get(path.resolve().as_uri())
    return [e for e in driver.get_log("browser") if e["level"] == "SEVERE"]


def column(driver, table_id: str, header: str) -> list[str]:
    headers = [th.text for th in driver.find_elements("css selector", f"#{table_id} thead th")]
    index = headers.index(header)
    rows = driver.find_elements("css selector", f"#{table_id} tbody tr")
    return [r.find_elements("css selector", "td")[index].get_attribute("data-sort") for r in rows if r.is_displayed()]


def headers(driver, table_id: str) -> list[str]:
    return [th.text for th in driver.find_elements("css selector", f"#{table_id} thead th")]


def texts(driver, table_id: str, header: str) -> list[str]:
    """A column's visible text, top to bottom."""
    index = headers(driver, table_id).index(header)
    return [r.find_elements("css selector", "td")[index].text
            for r in driver.find_elements("css selector", f"#{table_id} tbody tr") if r.is_displayed()]


def test_quickstart_leaderboard_in_a_browser(browser, quickstart_dir, tmp_path):
    from PIL import Image

    errors = open_page(browser, quickstart_dir / "leaderboard.html")
    assert errors == []
    assert browser.title.startswith("peftbench")
    assert len(browser.find_elements("css selector", "#leaderboard tbody tr")) == 9
    assert len(browser.find_elements("css selector", "figure img")) == 4
    assert all(img.get_property("naturalWidth") > 100 for img in browser.find_elements("css selector", "figure img"))
    shot = Image.open(io.BytesIO(browser.get_screenshot_as_png())).convert("RGB")
    assert len(set(shot.resize((200, 150)).getdata())) > 20, "the screenshot looks blank"
    # one category (quickstart): no P column repeating P_avg; invalid outputs in %, base's all invalid
    assert headers(browser, "leaderboard") == ["rank", "method", "P_avg", "invalid %", "mean rank",
                                               "trainable params", "extra FLOPs", "peak mem GB", "PSCP"]
    invalid = dict(zip(texts(browser, "leaderboard", "method"), texts(browser, "leaderboard", "invalid %"),
                       strict=True))
    assert invalid["base"] == "100.0" and all(0 <= float(v) <= 100 for v in invalid.values())
    assert dict(zip(texts(browser, "scores", "task"), texts(browser, "scores", "metric"), strict=True)) == {
        "qs_sentiment": "f1", "qs_topic": "macro_f1", "qs_arith": "numeric_accuracy"}
    assert "higher is better" in browser.find_element("id", "pscp-formula").text
    assert not [th.text for th in browser.find_elements("css selector", "th") if "CI" in th.text]  # 2 seeds


@pytest.fixture
def hostile_report(tmp_path):
    rows = [(m, t, s, "done", score) for m, base in (("lora", 70.0), (HOSTILE[0], 50.0), (HOSTILE[1], 60.0))
            for t, shift in (("sst2", 0), ("copa", 5), ("mmlu", -5)) for s, score in ((0, base + shift),
                                                                                   (1, base + shift + 2))]
    store = hand_store(tmp_path, rows)
    first = store.records()[0]
    store.predictions_dir.mkdir(parents=True)
    store.predictions_path(first.run_id).write_text(json.dumps(
        {"index": 0, "prediction": "<script>window.__xss=3</script>", "gold": "</pre><b>x</b>"}) + "\n")
    write_report(build_report(tmp_path))
    return tmp_path / "leaderboard.html"


def test_sorting_filtering_and_hostile_labels(browser, hostile_report):
    from selenium.common.exceptions import NoAlertPresentException
    from selenium.webdriver.support.ui import Select

    errors = open_page(browser, hostile_report)
    assert errors == []
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert  # noqa: B018 - accessing it is the check
    assert browser.execute_script("return window.__xss") is None
    assert len(browser.find_elements("tag name", "script")) == 1  # only the page's own
    assert not browser.find_elements("css selector", "img:not([src^='data:image/png'])")
    page_text = browser.find_element("tag name", "body").text
    assert HOSTILE[0] in page_text and HOSTILE[1] in page_text

    header = next(th for th in browser.find_elements("css selector", "#leaderboard th") if th.text == "P_avg")
    header.click()
    ascending = [float(v) for v in column(browser, "leaderboard", "P_avg")]
    assert ascending == sorted(ascending) and len(set(ascending)) == 3
    header.click()
    assert [float(v) for v in column(browser, "leaderboard", "P_avg")] == sorted(ascending, reverse=True)

    rows = browser.find_elements("css selector", "#scores tbody tr")
    assert len(rows) == 3 and all(r.is_displayed() for r in rows)
    Select(browser.find_element("id", "category-filter")).select_by_value("superglue")
    visible = [r for r in rows if r.is_displayed()]
    assert [r.find_element("css selector", "td").text for r in visible] == ["copa"]
    Select(browser.find_element("id", "category-filter")).select_by_value("all")
    assert all(r.is_displayed() for r in rows)


def test_the_page_explains_its_numbers(browser, hostile_report):
    """The formula with its constants and P's rule, a P per category (there are three), invalid
    outputs in %, each task's metric, tasks in category order."""
    assert open_page(browser, hostile_report) == []
    formula = browser.find_element("id", "pscp-formula").text
    assert "PSCP = P · (1 + M_p/C_p)^−β_p · (1 + M_f/C_f)^−β_f · (1 + M_m/C_m)^−β_m — higher is better." in formula
    assert "C_p = 500,000,000 trainable parameters, C_f = 10 extra TFLOPs, C_m = 94 GB, β = 2." in formula
    assert "each task's score floored at 0" in formula
    assert headers(browser, "leaderboard") == ["rank", "method", "P_avg", "P glue", "P superglue", "P other",
                                               "invalid %", "mean rank", "trainable params", "extra FLOPs",
                                               "peak mem GB", "PSCP"]
    p = dict(zip(texts(browser, "leaderboard", "method"), texts(browser, "leaderboard", "P superglue"), strict=True))
    assert p["lora"] == "76.0"  # copa: seeds 75 and 77
    assert texts(browser, "leaderboard", "invalid %") == ["0.0"] * 3
    assert texts(browser, "scores", "task") == ["sst2", "copa", "mmlu"]  # GLUE, SuperGLUE, other
    assert texts(browser, "scores", "metric") == ["f1"] * 3
    assert texts(browser, "leaderboard", "extra FLOPs") == ["0"] * 3


@pytest.mark.slow
def test_the_tpv_section_in_a_browser(browser, tpv_study):
    """A store holding only a TPV study: its section renders (tables, four inline plots) without errors."""
    _, out = tpv_study
    run_cli("report", "--out", str(out))
    errors = open_page(browser, out / "leaderboard.html")
    assert errors == []
    section = browser.find_element("id", "tpv")
    assert section.is_displayed() and section.text == "Task Prompt Vectors"
    images = browser.find_elements("css selector", "img[alt^='tpv ']")
    assert len(images) == 4 and all(img.get_property("naturalWidth") > 100 for img in images)
    tables = browser.find_elements("css selector", "table.tpv")
    assert len(tables) == 3  # single-task, combinations, few-shot
    first_row = [td.text for td in tables[0].find_elements("css selector", "tbody tr")[0].find_elements(
        "css selector", "td")]
    assert first_row[0] == "qs_feedback" and "±" in first_row[1]


def test_the_stability_section_in_a_browser(browser, tmp_path):
    from test_stability import strategy_store

    strategy_store(tmp_path)
    write_report(build_report(tmp_path))
    assert open_page(browser, tmp_path / "leaderboard.html") == []
    assert browser.find_element("id", "stability").text == "Stability by strategy"
    rows = browser.find_elements("css selector", "table.stability tbody tr")
    assert [r.find_elements("css selector", "td")[2].text for r in rows] == ["default", "deni", "ensemble"]
    image = browser.find_element("css selector", "img[alt='stability by strategy']")
    assert image.get_property("naturalWidth") > 100
