"""The web client in headless Chromium, through Envoy's gRPC-web edge, against the real stack."""

from pathlib import Path

import pytest
from playwright.sync_api import sync_playwright

from services.client import RemindClient
from services.shared import images
from services.stack import LocalStack, StackInfo

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


@pytest.fixture
def browser_page(tmp_path: Path):
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "profile"), executable_path=CHROMIUM, headless=True, args=CHROMIUM_FLAGS
        )
        try:
            yield context.new_page()
        finally:
            context.close()


def _open(page, info: StackInfo, token: str) -> None:
    page.goto(f"{info.web_url}/index.html?api={info.edge_url}&token={token}")


def test_web_client_makes_a_gif_over_grpc_web(
    browser_page, stack: LocalStack, stack_info: StackInfo, user_photo, tmp_path: Path
):
    page = browser_page
    photo = tmp_path / "me.png"
    photo.write_bytes(images.encode_image(user_photo, "png"))
    _open(page, stack_info, stack.token("web-user"))
    assert page.text_content("#account") == "Signed in as web-user."
    page.wait_for_function("document.querySelectorAll('#template option').length >= 3")
    page.set_input_files("#photo", str(photo))
    page.check("#consent")
    page.click("#start")

    # Progress arrives live from the WatchJob server stream, through Envoy.
    page.wait_for_function("document.querySelector('#progress').value > 0.2", timeout=120_000)
    assert "frames" in page.text_content("#status")
    page.wait_for_selector("#result:not([hidden])", timeout=120_000)
    page.wait_for_function("document.querySelector('#result').naturalWidth > 0")
    assert page.text_content("#status").startswith("Done")
    assert page.eval_on_selector("#result", "img => img.naturalWidth") == 320
    assert page.eval_on_selector("#progress", "bar => bar.value") == 1
    page.screenshot(path=str(tmp_path / "web-client.png"))
    with RemindClient(stack_info.orchestrator_address, token=stack.token("web-user")) as person:
        assert person.list_jobs(1)[0].consent, "the job keeps the consent ticked on the page"


def test_web_client_shows_an_expired_token_as_unauthenticated(
    browser_page, stack: LocalStack, stack_info: StackInfo
):
    page = browser_page
    _open(page, stack_info, stack.token("web-user", seconds=-120))
    page.wait_for_selector("#status.error")
    assert "UNAUTHENTICATED" in page.text_content("#status")
    assert "expired" in page.text_content("#status").lower()
