"""The pixel snippet in a real browser: Debian's Chromium, headless, driven by
Selenium, loads a page served from loopback (an allowed origin of the pixel) that
holds the snippet and tracks a purchase; the page view and the purchase arrive
through Envoy, with the household of the browser's address."""

from __future__ import annotations

import asyncio
import http.server
import shutil
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta

import grpc
import pytest
from podmesh.attribution.v1 import attribution_pb2 as pb
from podmesh.attribution.v1 import attribution_pb2_grpc

from devstack.stack import Stack
from tests.attribution_sites_support import (
    AttributionStub,
    CampaignStub,
    TenantStub,
    create_site,
    household,
)
from tests.support import bearer

pytestmark = pytest.mark.stack

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
# What works in this sandbox: no GPU, no sandbox (root), no background traffic.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
PURCHASE = (
    "podmesh('track', 'purchase', {value: {currencyCode: 'EUR', minorUnits: 4999},"
    " orderId: 'order-77', promoCode: 'PODCAST20'});"
)


class _Page(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/html; charset=utf-8")
        self.send_header("content-length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        return


@pytest.fixture
def page_server() -> Iterator[http.server.ThreadingHTTPServer]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Page)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="session")
async def attribution(stack: Stack) -> AsyncIterator[AttributionStub]:
    async with grpc.aio.insecure_channel(stack.service_addr("attribution")) as channel:
        yield attribution_pb2_grpc.AttributionServiceStub(channel)


def _load_in_chromium(url: str) -> str:
    """Opens the page, waits for the snippet to have sent both events; the browser's
    User-Agent."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="podmesh-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        driver.set_page_load_timeout(30)
        driver.get(url)
        WebDriverWait(driver, 30).until(lambda d: d.execute_script("return window.sent === 2"))
        user_agent: str = driver.execute_script("return navigator.userAgent")
        return user_agent
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


async def test_the_snippet_sends_a_page_view_and_a_purchase_from_a_real_browser(
    stack: Stack,
    tenants: TenantStub,
    campaigns: CampaignStub,
    attribution: AttributionStub,
    page_server: http.server.ThreadingHTTPServer,
) -> None:
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        pytest.skip(
            "Chromium is not installed (apt-get install chromium chromium-driver, as root; "
            "make system-deps does it when run as root)"
        )
    origin = f"http://127.0.0.1:{page_server.server_address[1]}"
    site = await create_site(stack, tenants, campaigns, attribution, allowed_origins=(origin,))
    # The page counts the snippet's answered requests, so the test knows when both left.
    _Page.body = f"""<!doctype html>
<html><head><title>Acme shop</title>
<script>
window.sent = 0;
var original = window.fetch;
window.fetch = function () {{
  return original.apply(this, arguments).then(function (r) {{ window.sent++; return r; }});
}};
</script>
{site.pixel.snippet}
</head><body><p>Thank you for your order.</p>
<script>{PURCHASE}</script>
</body></html>""".encode()
    started = datetime.now(UTC) - timedelta(seconds=1)
    user_agent = await asyncio.to_thread(_load_in_chromium, f"{origin}/thanks")

    response = await attribution.ListSiteEvents(
        pb.ListSiteEventsRequest(page_size=10), metadata=bearer(site.key)
    )
    events = sorted(response.site_events, key=lambda e: e.type)
    assert [e.type for e in events] == [pb.SITE_EVENT_TYPE_PAGE_VIEW, pb.SITE_EVENT_TYPE_PURCHASE]
    view, purchase = events
    assert {view.household_id, purchase.household_id} == {
        household(stack, site.tenant_id, "127.0.0.1")
    }
    assert view.url == f"{origin}/thanks"
    assert view.user_agent == user_agent
    assert view.pixel_id == purchase.pixel_id == site.pixel.id
    assert (purchase.value.currency_code, purchase.value.minor_units) == ("EUR", 4999)
    assert (purchase.order_id, purchase.promo_code) == ("order-77", "PODCAST20")
    # Ids made in the browser: UUIDs, one per event.
    assert len({view.id, purchase.id}) == 2
    assert all(len(e.id) == 36 for e in events)
    assert all(e.receive_time.ToDatetime(UTC) >= started for e in events)
