"""The gallery page in a real browser: Debian's Chromium driven by Playwright."""

import asyncio
import os
import re
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.async_api import Locator, Page, Route, async_playwright, expect

from tests.azurite import ACCOUNT, KEY, ROOT
from tests.served import ServedApp
from visionary.sas import SasPolicy

CHROMIUM = "/usr/bin/chromium"
# Flags for a closed network and a root user (see the environment notes in README.md).
CHROMIUM_FLAGS = [
    "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-sync",
    "--disable-background-networking", "--disable-component-update",
]
SCREENSHOT = ROOT / "docs" / "gallery.png"


@pytest.fixture
async def page() -> Page:
    assert Path(CHROMIUM).exists(), "Debian's chromium is missing: .ci/run installs it (apt-get install chromium)"
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_FLAGS)
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        yield page
        await browser.close()


async def seed(app: ServedApp, prompts: list[str]) -> None:
    async with httpx.AsyncClient(base_url=app.url, timeout=30) as http:
        for prompt in prompts:
            assert (await http.post("/api/generateImage", json={"prompt": prompt})).status_code == 201


async def test_generate_page_and_see_errors_in_the_gallery(page: Page, served_app: ServedApp, tmp_path: Path):
    subjects = ["lighthouse", "fox", "koi pond", "castle", "robot", "whale", "train", "greenhouse",
                "hummingbird", "desert", "library", "jazz trio", "village", "city"]
    await seed(served_app, [f"A {subject}, oil painting" for subject in subjects])
    await page.goto(served_app.url + "/")

    gallery = page.locator("#gallery li.tile")
    await expect(gallery).to_have_count(12)
    await expect(page.locator("#suggestion")).not_to_have_text("")
    await expect(gallery.first.locator("img")).to_have_attribute("alt", "A city, oil painting")

    # Load more walks on through nextCursor, then disappears on the last page.
    await page.click("#load-more")
    await expect(gallery).to_have_count(14)
    await expect(gallery.last.locator("img")).to_have_attribute("alt", "A lighthouse, oil painting")
    await expect(page.locator("#load-more")).to_be_hidden()

    # Generating shows a working state (held open until seen, as a slow model would), then the
    # new picture first in the grid.
    drawn = await hold(page, "**/api/generateImage")
    await page.fill("#prompt", "A red fox in fresh snow, watercolor")
    await page.click("#generate")
    await expect(page.locator("#status")).to_contain_text("Generating")
    await expect(page.locator("#generate")).to_be_disabled()
    drawn.set()
    await expect(gallery.first.locator("img")).to_have_attribute("alt", "A red fox in fresh snow, watercolor")
    await expect(page.get_by_role("status")).to_have_text("Your image is ready: it is first in the gallery.")
    assert await out_of_sight(page.locator("#status"))  # said to screen readers; the grid shows it
    await expect(gallery).to_have_count(15)
    loaded = await gallery.first.locator("img").evaluate("img => img.complete && img.naturalWidth")
    assert loaded == 1024  # the image really came from storage through its SAS link
    await page.unroute("**/api/generateImage")

    # A larger view on click.
    await gallery.first.click()
    await expect(page.locator("#viewer")).to_be_visible()
    await expect(page.locator("#viewer-prompt")).to_have_text("A red fox in fresh snow, watercolor")
    await page.click("#close-viewer")
    await expect(page.locator("#viewer")).to_be_hidden()

    shot = await page.screenshot(path=tmp_path / "gallery.png")
    assert shot.startswith(b"\x89PNG")
    if os.environ.get("UPDATE_SCREENSHOT"):  # README's picture: UPDATE_SCREENSHOT=1 make test
        SCREENSHOT.parent.mkdir(exist_ok=True)
        SCREENSHOT.write_bytes(shot)

    # An API error is shown from its `error` field.
    await page.fill("#prompt", "x" * 4001)
    await page.click("#generate")
    await expect(page.locator("#error")).to_have_text("The prompt is longer than 4000 characters; shorten it.")
    await expect(gallery).to_have_count(15)


async def hold(page: Page, url: str) -> asyncio.Event:
    """Hold the page's requests to `url` (as a slow model would) until the event returned is set:
    the test releases them once it has seen the page's working state, however slow the machine."""
    release = asyncio.Event()

    async def held(route: Route) -> None:
        await release.wait()
        await route.continue_()

    await page.route(url, held)
    return release


async def out_of_sight(element: Locator) -> bool:
    """Whether the element takes no room on screen (it may still be read by a screen reader)."""
    box = await element.bounding_box()
    return box is None or (box["width"] <= 1 and box["height"] <= 1)


async def test_a_tile_is_a_button_named_by_its_prompt_and_opens_the_viewer_from_the_keyboard(
    page: Page, served_app: ServedApp,
):
    # A screen reader announces each picture as a button with its prompt, in a list. From the
    # skip link, Tab reaches the newest picture with a focus ring; Enter and Space open the
    # viewer, Escape closes it, and the focus is back on the picture it was opened from.
    run = uuid.uuid4().hex[:8]
    fox_prompt, lighthouse_prompt = f"A fox {run}", f"A lighthouse {run}"
    await seed(served_app, [lighthouse_prompt, fox_prompt])  # the newest two of the module's gallery
    await page.goto(served_app.url + "/")
    pictures = page.get_by_role("list").get_by_role("listitem")
    fox = pictures.get_by_role("button", name=fox_prompt, exact=True)
    lighthouse = pictures.get_by_role("button", name=lighthouse_prompt, exact=True)
    viewer = page.get_by_role("dialog")
    await expect(pictures.first.get_by_role("button")).to_have_accessible_name(fox_prompt)

    await page.keyboard.press("Tab")
    await expect(page.get_by_role("link", name="Skip to the gallery")).to_be_focused()
    await page.keyboard.press("Enter")
    await page.keyboard.press("Tab")
    await expect(fox).to_be_focused()
    await expect(fox).to_have_css("outline-style", "solid")
    await page.keyboard.press("Enter")
    await expect(viewer).to_be_visible()
    await expect(viewer.locator("#viewer-prompt")).to_have_text(fox_prompt)
    await expect(viewer).to_have_accessible_description(fox_prompt)  # read out as the dialog opens
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()
    await expect(fox).to_be_focused()

    await page.keyboard.press("Tab")
    await expect(lighthouse).to_be_focused()
    await page.keyboard.press(" ")
    await expect(viewer.locator("#viewer-prompt")).to_have_text(lighthouse_prompt)
    await page.keyboard.press("Escape")
    await expect(viewer).to_be_hidden()
    await expect(lighthouse).to_be_focused()


async def test_a_prompt_typed_while_a_picture_is_drawn_is_kept(page: Page, served_app: ServedApp):
    # The field is emptied when the picture arrives, but only of the prompt that was drawn.
    await page.goto(served_app.url + "/")
    drawn = await hold(page, "**/api/generateImage")
    await page.fill("#prompt", "A lighthouse at dusk, oil painting")
    await page.get_by_role("button", name="Generate").click()
    await expect(page.get_by_role("status")).to_contain_text("Generating")
    await page.fill("#prompt", "A fox in the snow, next")
    drawn.set()
    await expect(page.get_by_role("status")).to_have_text("Your image is ready: it is first in the gallery.")
    await expect(page.locator("#prompt")).to_have_value("A fox in the snow, next")


async def test_generating_is_announced_in_a_live_region(page: Page, served_app: ServedApp):
    # Screen readers say what changes in a live region already on the page, not one that appears
    # with its text: the status region is there, empty and out of sight, before Generate.
    await page.goto(served_app.url + "/")
    status = page.get_by_role("status")
    await expect(status).to_have_text("")
    assert await out_of_sight(status)

    drawn = await hold(page, "**/api/generateImage")
    await page.fill("#prompt", "A lighthouse at dusk, oil painting")
    await page.get_by_role("button", name="Generate").click()
    await expect(status).to_have_text("Generating your image… this can take up to a minute.")
    assert not await out_of_sight(status)
    # and nothing around it busy: screen readers may hold back what a busy element's region says
    assert await status.evaluate("el => el.closest('[aria-busy=\"true\"]') === null")
    drawn.set()
    await expect(status).to_have_text("Your image is ready: it is first in the gallery.")
    assert await out_of_sight(status)


async def test_buttons_pressed_from_the_keyboard_keep_the_focus(page: Page, served_app: ServedApp):
    # A button disabled while it works drops the focus to the page, and a hidden one sends the
    # next Tab back to the top: Load more and Generate keep the focus while they work, and Load
    # more, gone after the last page, hands it on to the first picture that page added.
    run = uuid.uuid4().hex[:8]
    await seed(served_app, [f"A harbour at night, print {n} {run}" for n in range(13)])
    await page.goto(served_app.url + "/")
    pictures = page.get_by_role("list").get_by_role("listitem")
    await expect(pictures).to_have_count(12)

    listed = asyncio.Event()  # the last page held until Load more's working state is seen

    async def last_page_slowly(route: Route) -> None:
        # The page after the first is the last one, however many pictures the module stored.
        await listed.wait()
        response = await route.fetch()
        await route.fulfill(response=response, json={**await response.json(), "nextCursor": None})

    await page.route("**/api/getImages?*", last_page_slowly)
    drawn = await hold(page, "**/api/generateImage")
    load_more = page.get_by_role("button", name="Load more")
    await load_more.focus()
    await page.keyboard.press("Enter")
    await expect(load_more).to_be_disabled()
    await expect(load_more).to_be_focused()
    listed.set()
    await expect(load_more).to_be_hidden()
    first_of_the_last_page = pictures.nth(12).get_by_role("button")
    await expect(first_of_the_last_page).to_have_accessible_name(f"A harbour at night, print 0 {run}")
    await expect(first_of_the_last_page).to_be_focused()

    generate = page.get_by_role("button", name="Generate")
    await page.fill("#prompt", f"A harbour at dawn, print {run}")
    await generate.focus()
    await page.keyboard.press("Enter")
    await expect(generate).to_be_disabled()
    await expect(generate).to_be_focused()
    drawn.set()
    newest = pictures.first.get_by_role("button")
    await expect(newest).to_have_accessible_name(f"A harbour at dawn, print {run}")
    await expect(generate).to_be_enabled()
    await expect(generate).to_be_focused()


async def test_a_tile_whose_link_has_expired_is_signed_again(page: Page, served_app: ServedApp):
    # A page left open past its links' expiry: the gallery page arrives with links signed an
    # hour ago, which storage (Azurite) refuses with 403. The tile is drawn again with a fresh
    # SAS; a picture that fails with a fresh link too is shown as broken.
    await seed(served_app, ["Lighthouse at dusk", "Fox in the snow"])
    old_links: dict[str, str] = {}

    async def gallery_opened_an_hour_ago(route: Route) -> None:
        response = await route.fetch()
        gallery_page = await response.json()
        for image in gallery_page["imageUrls"]:
            image["url"] = old_links[image["prompt"]] = signed_an_hour_ago(image["url"])
        await route.fulfill(response=response, json=gallery_page)

    refused: list[str] = []

    async def storage(route: Route) -> None:
        if "Lighthouse" in route.request.url:
            refused.append(route.request.url)
            await route.fulfill(status=403, content_type="application/xml", body=AUTHENTICATION_FAILED)
        else:
            await route.continue_()

    await page.route("**/api/getImages?*", gallery_opened_an_hour_ago)
    await page.route("**/gallery/**", storage)
    sas_requests: list[str] = []
    page.on("request", lambda request: sas_requests.append(request.url) if "/sasToken" in request.url else None)
    await page.goto(served_app.url + "/")

    fox = page.locator("#gallery li.tile", has=page.locator('img[alt="Fox in the snow"]'))
    lighthouse = page.locator("#gallery li.tile", has=page.locator('img[alt="Lighthouse at dusk"]'))
    await expect(fox.locator("img")).to_have_js_property("naturalWidth", 1024)
    await expect(fox).not_to_have_class(re.compile("is-broken"))
    await expect(lighthouse).to_have_class(re.compile("is-broken"))
    # Its picture out of sight, the tile is still a button named by the prompt.
    await expect(lighthouse.get_by_role("button", name="Lighthouse at dusk", exact=True)).to_be_visible()
    assert len(sas_requests) == 1  # one fresh SAS for every tile that needed one
    assert sum("Lighthouse" in url for url in refused) == 2  # the old link, then one try with the new
    fresh = await fox.locator("img").get_attribute("src")
    assert fresh is not None and fresh != old_links["Fox in the snow"]
    assert sas_expiry(fresh) > datetime.now(timezone.utc) > sas_expiry(old_links["Fox in the snow"])


def signed_an_hour_ago(url: str) -> str:
    """The same picture's link as a page opened an hour ago holds it: expired half an hour since."""
    blob_url = url.partition("?")[0]
    container = urlsplit(blob_url).path.split("/")[2]  # /devstoreaccount1/<container>/gallery/...
    policy = SasPolicy(ACCOUNT, container, blob_url, ttl=timedelta(minutes=30))
    start, expiry = policy.window(datetime.now(timezone.utc) - timedelta(hours=1))
    return f"{blob_url}?{policy.read_sas(start, expiry, account_key=KEY).token}"


def sas_expiry(url: str) -> datetime:
    return datetime.fromisoformat(parse_qs(urlsplit(url).query)["se"][0].replace("Z", "+00:00"))


AUTHENTICATION_FAILED = (
    '<?xml version="1.0" encoding="utf-8"?><Error><Code>AuthenticationFailed</Code><Message>Server failed to '
    "authenticate the request. Make sure the value of Authorization header is formed correctly including the "
    "signature.</Message><AuthenticationErrorDetail>Signed expiry time [Sat, 21 Nov 2026 08:35:00 GMT] must be "
    "after signed start time [Sat, 21 Nov 2026 09:12:03 GMT]</AuthenticationErrorDetail></Error>"
)


async def test_a_gallery_that_failed_to_load_can_be_loaded_again(page: Page, served_app: ServedApp):
    # Storage is away as the page opens: the 503 says "try again shortly", and the page offers a
    # way to, without a reload that would also drop what is typed in the prompt box.
    newest = f"Harbour at night {uuid.uuid4().hex[:8]}"
    await seed(served_app, [newest])
    answered: list[int] = []

    async def storage_away_once(route: Route) -> None:
        if answered:
            await route.continue_()
            return
        answered.append(503)
        await route.fulfill(status=503, json={
            "error": "Image storage is unavailable right now; try again shortly.", "code": "storage_unavailable",
        })

    await page.route("**/api/getImages?*", storage_away_once)
    await page.goto(served_app.url + "/")
    await expect(page.locator("#error")).to_have_text("Image storage is unavailable right now; try again shortly.")
    await expect(page.locator("#gallery li.tile")).to_have_count(0)
    await expect(page.locator("#load-more")).to_have_text("Try again")
    # From the keyboard: the button hides while it tries, and the focus goes on to the pictures.
    await page.focus("#load-more")
    await page.keyboard.press("Enter")
    await expect(page.locator("#gallery li.tile").first.locator("img")).to_have_attribute("alt", newest)
    await expect(page.get_by_role("button", name=newest, exact=True)).to_be_focused()
    await expect(page.locator("#error")).to_be_hidden()


async def test_generate_again_after_a_lost_answer_stores_one_picture(page: Page, served_app: ServedApp):
    # The connection drops after the server has drawn and stored the picture (a proxy's timeout,
    # a network change): the page says the API could not be reached, and the user clicks Generate
    # again. The retry carries the first attempt's Idempotency-Key, so it gets that picture back
    # rather than paying the model for a second, identical one.
    await page.goto(served_app.url + "/")
    await expect(page.locator("#gallery")).to_have_attribute("aria-busy", "false")
    prompt = f"A koi pond at dawn, ink wash {uuid.uuid4().hex[:8]}"
    keys: list[str | None] = []

    async def answer_lost_once(route: Route) -> None:
        keys.append(await route.request.header_value("idempotency-key"))
        if len(keys) == 1:
            await route.fetch()  # the server draws and stores it; its answer never reaches the page
            await route.abort("connectionreset")
        else:
            await route.continue_()

    await page.route("**/api/generateImage", answer_lost_once)
    await page.fill("#prompt", prompt)
    await page.click("#generate")
    await expect(page.locator("#error")).to_contain_text("could not be reached")
    await page.click("#generate")
    gallery = page.locator("#gallery li.tile", has=page.locator(f'img[alt="{prompt}"]'))
    await expect(gallery).to_have_count(1)
    async with httpx.AsyncClient(base_url=served_app.url, timeout=30) as http:
        stored = (await http.get("/api/getImages", params={"limit": 500})).json()["imageUrls"]
    assert [image["prompt"] for image in stored].count(prompt) == 1
    assert keys[0] and keys[1] == keys[0]

    # A new picture of the same prompt, once the first has arrived, is a new request.
    await page.fill("#prompt", prompt)
    await page.click("#generate")
    await expect(gallery).to_have_count(2)
    assert keys[2] and keys[2] != keys[0]


async def test_a_retry_while_the_first_attempt_is_still_drawn_says_so_in_plain_words(page: Page, served_app: ServedApp):
    # The server's 409 in_progress names the Idempotency-Key, which the user never saw.
    await page.goto(served_app.url + "/")
    await page.route("**/api/generateImage", lambda route: route.fulfill(status=409, json={
        "error": "A request with this Idempotency-Key is still running; retry later.", "code": "in_progress",
    }))
    await page.fill("#prompt", "A koi pond at dawn, ink wash")
    await page.click("#generate")
    await expect(page.locator("#error")).to_have_text(
        "Your picture is still being drawn; click Generate again in a moment to get it."
    )
    await expect(page.locator("#prompt")).to_have_value("A koi pond at dawn, ink wash")


async def test_a_rate_limited_generation_says_how_long_to_wait(page: Page, served_app: ServedApp):
    # The model service's 429 as the API passes it on: a sentence that says "later", and the
    # wait in Retry-After, which the page turns into words.
    await page.goto(served_app.url + "/")
    rate_limited = {"error": "The model service is rate limiting requests; try again later.", "code": "rate_limited"}
    await page.route("**/api/generateImage", lambda route: route.fulfill(
        status=429, json=rate_limited, headers={"Retry-After": "30", "Access-Control-Expose-Headers": "Retry-After"},
    ))
    await page.fill("#prompt", "A koi pond at dawn, ink wash")
    await page.click("#generate")
    await expect(page.locator("#error")).to_have_text(
        "The model service is rate limiting requests; try again later. Wait about 30 seconds before trying again."
    )
