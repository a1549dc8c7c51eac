"""The web console in a real browser: Debian's chromium driven by Playwright, against the whole
Protege app (protege.app.build_app under uvicorn on 127.0.0.1) in front of a fake teacher.

Traffic goes through the proxy with the real ``openai`` SDK; the browser signs in with the admin
key, filters captures by metadata, opens one, adds a correction and sees it in the next dataset
build, opens eval reports, promotes and rolls back a student and the proxy's ``x-protege-served-by``
follows. Every request the pages make must go to 127.0.0.1, and every page is screenshotted at
1280 px and at phone width into ``$PROTEGE_TEST_ARTIFACTS`` (default tests/artifacts/console).
"""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path
from urllib.parse import urlsplit

import openai
import orjson
import pytest

from tests.fakes.openai_upstream import start_fake_openai
from tests.fixtures.http import Served

CHROMIUM = os.environ.get("PROTEGE_CHROMIUM", "/usr/bin/chromium")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run"]
ADMIN_KEY = "sk-admin-console-test"
ARTIFACTS = Path(os.environ.get("PROTEGE_TEST_ARTIFACTS") or Path(__file__).parent / "artifacts" / "console")
TEACHER = "gpt-4o-mini"
STUDENT = "ft:gpt-4o-mini-2024-07-18:acme::stu1"
BIG_TEACHER = "gpt-4o"  # the routed traffic's teacher: a fine-tuned gpt-4o-mini costs less


def teacher_reply(body: dict) -> str | dict:
    question = body["messages"][-1]["content"]
    if "weather" in question:
        return {"content": None, "tool_calls": [{"id": "call_w1", "type": "function",
                                                 "function": {"name": "get_weather", "arguments": '{"city": "Oslo", "unit": "c"}'}}]}
    return f"Answer to: {question}"


class Stack:
    """Teacher + the whole Protege app (proxy, APIs, console) with an admin key configured."""

    def __init__(self, db: str, data_dir: Path | None = None) -> None:
        from protege.app import build_app
        from protege.settings import Settings

        self.teacher = start_fake_openai(teacher_reply)
        self.settings = Settings(db=db, data_dir=str(data_dir) if data_dir else None, upstream=self.teacher.base_url,
                                 flush_interval=0.01, admin_keys=[ADMIN_KEY])
        self.app, self.store, self.writer = build_app(self.settings)
        self.served = Served(self.app)
        self.url = self.served.url
        self.client = openai.OpenAI(base_url=self.url + "/v1", api_key="sk-client", max_retries=0)
        self.admin = openai.OpenAI(base_url=self.url + "/protege/v1", api_key=ADMIN_KEY, max_retries=0)

    def ask(self, question: str, metadata: dict[str, str], stream: bool = False, model: str = TEACHER) -> tuple[str, str]:
        """(x-protege-served-by, completion id)."""
        if stream:
            with self.client.chat.completions.with_streaming_response.create(
                model=TEACHER, metadata=metadata, stream=True, messages=[{"role": "user", "content": question}]
            ) as resp:
                served = resp.headers["x-protege-served-by"]
                cid = next(c.id for c in resp.parse())
                for _ in resp.parse():
                    pass
            return served, cid
        raw = self.client.chat.completions.with_raw_response.create(
            model=model, metadata=metadata, store=True,
            messages=[{"role": "system", "content": "You are the support bot."}, {"role": "user", "content": question}],
        )
        return raw.headers["x-protege-served-by"], raw.parse().id

    def settle(self) -> None:
        time.sleep(0.3)  # shadow answers are captured after the client's
        assert self.writer.flush(10)

    def stop(self) -> None:
        self.served.stop()
        self.teacher.stop()


# Each backend's module-wide stack (the conftest's ``backend`` parameter is per test; the pages here
# share one app and store across the module's tests, so the parameter is the fixture's own).
@pytest.fixture(scope="module", params=["duckdb", "postgresql"])
def stack(request, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("console")
    if request.param == "postgresql":
        s = Stack(request.getfixturevalue("postgres_server").database(), data_dir=tmp / "protege-data")
    else:
        s = Stack(str(tmp / "console.duckdb"))
    yield s
    s.stop()


@pytest.fixture(scope="module")
def browser():
    if not (shutil.which(CHROMIUM) or Path(CHROMIUM).is_file()):
        pytest.fail(f"chromium not found at {CHROMIUM}: the console's browser tests need Debian's chromium "
                    "(apt-get install -y chromium), or PROTEGE_CHROMIUM set to a chromium binary")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True)
        yield b
        b.close()


class Page:
    """A browser tab that records every request it makes, signs in, and takes screenshots."""

    def __init__(self, browser, stack: Stack) -> None:
        self.ctx = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        self.page = self.ctx.new_page()
        self.requests: list[str] = []
        self.page.on("request", lambda r: self.requests.append(r.url))
        self.stack = stack

    def goto(self, path: str) -> None:
        self.page.goto(self.stack.url + path)

    def login(self, path: str = "/ui/") -> None:
        self.goto(path)
        assert "/ui/login" in self.page.url
        self.page.get_by_label("Admin key").fill(ADMIN_KEY)
        self.page.get_by_role("button", name="Sign in").click()
        self.page.wait_for_url(re.compile(re.escape(self.stack.url + path.split("?")[0])))

    def shot(self, name: str) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-1280.png"), full_page=True)
        self.page.set_viewport_size({"width": 390, "height": 844})
        self.page.screenshot(path=str(ARTIFACTS / f"{name}-phone.png"), full_page=True)
        self.page.set_viewport_size({"width": 1280, "height": 900})

    def close(self) -> None:
        hosts = {urlsplit(u).hostname for u in self.requests if not u.startswith(("data:", "about:", "blob:"))}
        self.ctx.close()
        assert hosts <= {"127.0.0.1"}, f"the console fetched from outside 127.0.0.1: {sorted(hosts)}"


@pytest.fixture
def tab(browser, stack):
    p = Page(browser, stack)
    yield p
    p.close()


def test_login_keeps_the_key_out_of_cookies_and_urls(tab: Page) -> None:
    tab.goto("/ui/traffic")
    assert "/ui/login" in tab.page.url
    tab.shot("login")
    tab.page.get_by_label("Admin key").fill("sk-wrong")
    tab.page.get_by_role("button", name="Sign in").click()
    assert tab.page.get_by_role("alert").inner_text() == "That is not an admin key of this server."
    tab.page.get_by_label("Admin key").fill(ADMIN_KEY)
    tab.page.get_by_role("button", name="Sign in").click()
    tab.page.wait_for_url(re.compile(r"/ui/traffic$"))
    (cookie,) = tab.ctx.cookies()
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["expires"] == -1  # a session cookie
    assert ADMIN_KEY not in cookie["value"] and all(ADMIN_KEY not in u for u in tab.requests)
    # signing out ends the session
    tab.page.get_by_role("button", name="Sign out").click()
    tab.goto("/ui/traffic")
    assert "/ui/login" in tab.page.url


def test_filter_open_correct_and_see_it_in_the_next_dataset(tab: Page, stack: Stack) -> None:
    dev_ids = [stack.ask(f"Where is parcel {i}?", {"env": "dev", "team": "support"})[1] for i in range(6)]
    for i in range(5):
        stack.ask(f"Prod question {i}", {"env": "prod"})
    _served, tool_id = stack.ask("What is the weather in Oslo?", {"env": "dev", "team": "support"})
    _served, stream_id = stack.ask("Stream me parcel news", {"env": "stream"}, stream=True)
    stack.settle()
    ds = stack.admin.post("/datasets", cast_to=object, body={"name": "support", "models": [TEACHER], "metadata": {"env": "dev"},
                                                             "validation_fraction": 0.0})
    assert ds["counts"]["final"] == 7, ds["counts"]  # six answers and the tool call

    tab.login("/ui/traffic")
    tab.shot("traffic")
    tab.page.get_by_label("Metadata key").fill("env")
    tab.page.get_by_label("Metadata value").fill("dev")
    tab.page.get_by_role("button", name="Filter").click()
    tab.page.wait_for_url(re.compile(r"meta_value=dev"))
    rows = tab.page.locator("table.traffic tbody tr")
    rows.first.wait_for()
    tab.page.wait_for_function("document.querySelectorAll('table.traffic tbody tr').length === 7")
    assert all("env=dev" in t for t in rows.all_inner_texts())
    tab.shot("traffic-filtered")

    # the newest dev capture is the tool call: arguments pretty-printed
    tab.page.locator("a.capture-link").first.click()
    tab.page.wait_for_url(re.compile(re.escape(tool_id)))
    assert "get_weather" in tab.page.inner_text("main") and '"city": "Oslo"' in tab.page.inner_text("main")
    tab.shot("capture-tool-call")

    # a streamed capture reads as its reassembled answer
    tab.goto(f"/ui/traffic/{stream_id}")
    assert "yes (shown reassembled)" in tab.page.inner_text("main")
    assert "Answer to: Stream me parcel news" in tab.page.locator("article.role-assistant").inner_text()

    # correct one answer in place, and edit its metadata
    target = dev_ids[2]
    tab.goto(f"/ui/traffic/{target}")
    assert "Answer to: Where is parcel 2?" in tab.page.inner_text("main")
    tab.page.get_by_label("Correction (the answer it should have given)").fill("Parcel 2 arrives on Friday.")
    tab.page.get_by_label("Comment").fill("teacher guessed")
    tab.page.get_by_role("button", name="Add feedback").click()
    tab.page.get_by_text("Feedback added.").wait_for()
    assert "Parcel 2 arrives on Friday." in tab.page.locator("#feedback").inner_text()
    tab.page.get_by_label("New key").fill("reviewed")
    tab.page.get_by_label("New value").fill("yes")
    tab.page.get_by_role("button", name="Save metadata").click()
    tab.page.get_by_text("Metadata saved.").wait_for()
    from protege.store import get_stored

    assert get_stored(stack.store, target)["metadata"] == {"env": "dev", "team": "support", "reviewed": "yes"}
    tab.page.reload()
    assert "Parcel 2 arrives on Friday." in tab.page.locator("#feedback").inner_text()
    tab.shot("capture")

    # datasets: v1 has the teacher's answer, the next build has the correction
    tab.goto("/ui/datasets")
    tab.shot("datasets")
    tab.page.get_by_role("link", name="support v1").click()
    v1_train = tab.page.request.get(stack.url + tab.page.get_by_role("link", name="Download train").get_attribute("href")).text()
    assert "Answer to: Where is parcel 2?" in v1_train and "Parcel 2 arrives on Friday." not in v1_train
    tab.page.get_by_role("button", name="Build next version").click()
    tab.page.wait_for_selector("h1:has-text('support v2')")
    assert "Counts after each step" in tab.page.inner_text("main")
    v2_train = tab.page.request.get(stack.url + tab.page.get_by_role("link", name="Download train").get_attribute("href")).text()
    lines = [orjson.loads(line) for line in v2_train.splitlines()]
    answers = [ln["messages"][-1].get("content") for ln in lines]
    assert "Parcel 2 arrives on Friday." in answers and "Answer to: Where is parcel 2?" not in answers
    with tab.page.expect_download() as dl:
        tab.page.get_by_role("link", name="Download card").click()
    assert dl.value.suggested_filename == "support-v2-card.md"
    tab.shot("dataset")


def test_older_pages_load_in_place(tab: Page, stack: Stack) -> None:
    from protege.store import insert_records, record_from_completion

    recs = [record_from_completion({"id": f"chatcmpl-bulk{i}", "object": "chat.completion", "created": 1_700_000_000 + i, "model": TEACHER,
                                    "choices": [{"index": 0, "message": {"role": "assistant", "content": f"bulk {i}"}, "finish_reason": "stop"}]},
                                   {"model": TEACHER, "messages": [{"role": "user", "content": f"bulk question {i}"}]},
                                   metadata={"env": "bulk"}) for i in range(120)]
    insert_records(stack.store, recs)
    tab.login("/ui/traffic?meta_key=env&meta_value=bulk")
    rows = tab.page.locator("table.traffic tbody tr:not(#more-row)")
    assert rows.count() == 50 and "bulk question 119" in rows.first.inner_text()
    tab.page.get_by_role("link", name="Load older captures").click()
    tab.page.wait_for_function("document.querySelectorAll('table.traffic tbody tr:not(#more-row)').length === 100")
    tab.page.get_by_role("link", name="Load older captures").click()
    tab.page.wait_for_function("document.querySelectorAll('table.traffic tbody tr:not(#more-row)').length === 120")
    assert tab.page.get_by_role("link", name="Load older captures").count() == 0
    texts = rows.all_inner_texts()
    assert "bulk question 0" in texts[-1] and len(set(texts)) == 120


def _eval_run(stack: Stack, name: str, wrong: set[str]) -> str:
    from protege.evals.runs import RunSpec, create_run, run_sync

    capitals = [("France", "Paris"), ("Chile", "Santiago"), ("Japan", "Tokyo"), ("Kenya", "Nairobi")]
    table = dict(capitals)
    student = start_fake_openai(lambda b: "Nowhere" if (c := b["messages"][-1]["content"][11:-1]) in wrong else table.get(c, "?"))
    try:
        os.environ["CONSOLE_STUDENT_KEY"] = "sk-student-test"
        spec = RunSpec.from_dict({
            "name": name, "metrics": ["exact_match"], "n_resamples": 100,
            "candidates": [{"name": "student", "model": "gpt-4o-mini", "base_url": student.base_url, "api_key_env": "CONSOLE_STUDENT_KEY"}],
            "items": [{"messages": [{"role": "user", "content": f"Capital of {c}?"}], "reference": city} for c, city in capitals],
        })
        run = create_run(stack.store, spec)
        # Playwright's sync API holds an event loop on this thread: the run gets its own thread.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(1) as pool:
            out = pool.submit(run_sync, stack.store, run["id"]).result(120)
        assert out["status"] == "completed", out
        return run["id"]
    finally:
        student.stop()


def test_eval_reports_inline_and_side_by_side(tab: Page, stack: Stack) -> None:
    good = _eval_run(stack, "good-student", set())
    bad = _eval_run(stack, "weak-student", {"Chile", "Kenya"})
    tab.login("/ui/evals")
    tab.shot("evals")
    tab.page.get_by_role("link", name="weak-student").click()
    frame = tab.page.frame_locator("iframe.report")
    frame.locator("body").wait_for()
    assert "exact_match" in frame.locator("body").inner_text()
    assert "0.5" in tab.page.locator("main table").inner_text()  # the student's score beside the report
    tab.shot("eval")
    tab.goto("/ui/evals")
    tab.page.get_by_label("Compare good-student as A").check()
    tab.page.get_by_label("Compare weak-student as B").check()
    tab.page.get_by_role("button", name="Compare A and B").click()
    tab.page.wait_for_load_state()
    from urllib.parse import parse_qs

    assert parse_qs(urlsplit(tab.page.url).query) == {"a": [good], "b": [bad]}, tab.page.url
    assert tab.page.locator("section[aria-label='Run A'] h2").inner_text() == "A: good-student"
    assert tab.page.locator("section[aria-label='Run B'] h2").inner_text() == "B: weak-student"
    assert tab.page.locator("iframe.report").count() == 2
    for i in range(2):
        tab.page.frame_locator("iframe.report").nth(i).locator("body").wait_for()
    tab.shot("eval-compare")


def test_promote_and_roll_back_change_who_answers(tab: Page, stack: Stack) -> None:
    from protege.distill.auto.rollout import open_route
    from protege.distill.auto.policies import parse_policy, save_policy

    policy = parse_policy({"name": "routing", "match": {"model": BIG_TEACHER, "metadata": {"task": "route"}},
                           "trigger": {"min_new_completions": 100_000},
                           "rollout": {"stages": ["shadow", "canary", "full"], "agreement_threshold": 0.8, "min_compared": 1000,
                                       "comparison": "exact"}})
    pid = save_policy(stack.store, policy).id
    open_route(stack.store, pid, policy, STUDENT, "shadow")
    for i in range(8):
        assert stack.ask(f"route question {i}", {"task": "route"}, model=BIG_TEACHER)[0] == "teacher"
    stack.settle()

    tab.login("/ui/students")
    tab.shot("students")
    tab.page.get_by_role("link", name="routing").click()
    assert tab.page.locator("#route-stage").inner_text() == "shadow"
    assert "over 8 pairs" in tab.page.inner_text("main")  # the student's shadow answers agree with the teacher's
    assert tab.page.locator(".chart-wide svg[aria-label='Online agreement over time'] circle").count() >= 1
    tab.shot("student")

    tab.page.get_by_role("link", name="Promote…").click()
    tab.page.get_by_label("Move to stage").select_option("full")
    tab.shot("confirm-promote")
    tab.page.get_by_role("button", name="Yes, promote").click()
    tab.page.get_by_text("Promoted.").wait_for()
    assert tab.page.locator("#route-stage").inner_text() == "full"
    assert stack.ask("route question after promote", {"task": "route"}, model=BIG_TEACHER)[0] == "student"

    tab.page.get_by_role("link", name="Roll back…").click()
    assert "the teacher answers every matching request again" in tab.page.inner_text("main")
    tab.shot("confirm-rollback")
    tab.page.get_by_role("button", name="Yes, roll back").click()
    tab.page.get_by_text("Rolled back.").wait_for()
    assert "No live route" in tab.page.locator("#route-stage").inner_text()
    # the agreement history outlives the route
    assert tab.page.locator(".chart-wide svg[aria-label='Online agreement over time'] circle").count() >= 1
    assert stack.ask("route question after rollback", {"task": "route"}, model=BIG_TEACHER)[0] == "teacher"
    decisions = tab.page.locator("table.decisions tbody").inner_text()
    assert "manual_rollback" in decisions and "manual promote shadow -> full" in decisions
    tab.shot("student-rolled-back")

    # the overview prices what the student answered against the teacher
    stack.settle()
    tab.goto("/ui/")
    saved = tab.page.locator("#stat-saved").inner_text()
    assert saved.startswith("$") and float(saved[1:]) > 0
    assert int(tab.page.locator("#stat-requests").inner_text().replace(",", "")) >= 9
    assert tab.page.locator(".chart-wide svg[aria-label='Requests per minute']").count() == 1
    tab.shot("overview")


def test_finetune_job_loss_curve_and_cancel(tab: Page, stack: Stack) -> None:
    from protege.store import jobs as store_jobs

    job = store_jobs.create_job(stack.store, backend="openai", model="gpt-4o-mini-2024-07-18", name="support-ft", status="running")
    store_jobs.add_events(stack.store, job["id"], [
        {"type": "metrics", "message": f"Step {s}/20: training loss={2.0 / s:.3f}",
         "data": {"step": s, "train_loss": 2.0 / s, "total_steps": 20}} for s in range(1, 11)
    ])
    tab.login("/ui/finetunes")
    tab.shot("finetunes")
    tab.page.get_by_role("link", name="support-ft").click()
    assert tab.page.locator("#job-status").inner_text() == "running"
    assert tab.page.get_by_label("Progress (50%)").get_attribute("value") == "0.5"
    assert tab.page.locator(".chart-wide svg[aria-label='Training loss by step'] circle").count() == 10
    tab.shot("finetune")
    tab.page.get_by_role("button", name="Cancel job").click()
    tab.page.get_by_text("Job cancelled.").wait_for()
    assert tab.page.locator("#job-status").inner_text() == "cancelled"
    assert store_jobs.get_job(stack.store, job["id"])["status"] == "cancelled"


def test_keyboard_reaches_every_control(tab: Page, stack: Stack) -> None:
    """Every control on the traffic page has a label and takes focus from the keyboard."""
    tab.login("/ui/traffic")
    unlabeled = tab.page.evaluate("""() => [...document.querySelectorAll('input:not([type=hidden]), select, textarea')]
        .filter(el => !(el.labels && el.labels.length) && !el.getAttribute('aria-label')).map(el => el.name)""")
    assert unlabeled == []
    focused = set()
    for _ in range(40):
        tab.page.keyboard.press("Tab")
        focused.add(tab.page.evaluate("document.activeElement.id || document.activeElement.name || document.activeElement.textContent.trim()"))
    assert {"f-model", "f-meta-key", "f-meta-value", "f-outcome", "f-served", "Filter"} <= focused
