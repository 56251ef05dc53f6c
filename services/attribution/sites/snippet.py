"""The pixel's snippet: the HTML a sponsor pastes into every page of its site.

Small and dependency-free. It sends a page view as the page loads, and
``podmesh('track', 'lead' | 'purchase', {value: {currencyCode, minorUnits}, orderId,
promoCode})`` sends the rest (calls made before the snippet ran are queued and sent).
Each event is one JSON POST to the gateway's ``/api/v1/siteEvents:track`` with an id
made in the browser (``crypto.randomUUID``), so a retry after a network error or a
5xx/429 answer resends the same id and is stored once.

It sets no cookie and reads no storage, and its requests carry none
(``credentials: "omit"``): the household is the keyed hash of the visitor's IP
address, made on the server, like the household of a podcast download, so the pixel
needs nothing on the device and leaves no identifier there. It sends
``text/plain`` so that browsers make no CORS preflight (a "simple" request, the only
kind ``navigator.sendBeacon`` can send, used when ``fetch`` is missing or refuses).
"""

from __future__ import annotations

import json
import uuid

TRACK_PATH = "/api/v1/siteEvents:track"

_TEMPLATE = """<!-- Podmesh pixel -->
<script>
(function (w, d, url, pixel) {
  var queued = (w.podmesh && w.podmesh.q) || [];
  var types = {page_view: "SITE_EVENT_TYPE_PAGE_VIEW", lead: "SITE_EVENT_TYPE_LEAD",
    purchase: "SITE_EVENT_TYPE_PURCHASE"};
  function newId() {
    if (w.crypto && w.crypto.randomUUID) return w.crypto.randomUUID();
    return "r-" + Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }
  function text(v) { return String(v).slice(0, 2048); }
  function post(body, attempt) {
    function again() {
      if (attempt < 3) setTimeout(function () { post(body, attempt + 1); }, 1000 << attempt);
    }
    try {
      w.fetch(url, {method: "POST", body: body, keepalive: true, credentials: "omit",
        mode: "cors", headers: {"Content-Type": "text/plain"}})
        .then(function (r) { if (r.status >= 500 || r.status === 429) again(); }, again);
    } catch (e) {
      if (!(w.navigator.sendBeacon && w.navigator.sendBeacon(url, body))) again();
    }
  }
  function track(name, data) {
    var type = types[name];
    if (!type) return;
    data = data || {};
    var event = {id: newId(), type: type, pixelId: pixel, url: text(w.location.href),
      referrer: text(d.referrer || "")};
    if (data.value) event.value = {currencyCode: text(data.value.currencyCode || ""),
      minorUnits: String(Math.round(Number(data.value.minorUnits) || 0))};
    if (data.orderId) event.orderId = text(data.orderId);
    if (data.promoCode) event.promoCode = text(data.promoCode);
    post(JSON.stringify({events: [event]}), 0);
  }
  w.podmesh = function (command, name, data) { if (command === "track") track(name, data); };
  w.podmesh.pixelId = pixel;
  track("page_view");
  for (var i = 0; i < queued.length; i++) w.podmesh.apply(w, queued[i]);
})(window, document, {url}, {pixel});
</script>
"""


def render(gateway_url: str, pixel_id: uuid.UUID) -> str:
    """The snippet for one pixel, posting to the gateway at `gateway_url`."""
    return _TEMPLATE.replace("{url}", _js_string(gateway_url.rstrip("/") + TRACK_PATH)).replace(
        "{pixel}", _js_string(str(pixel_id))
    )


def _js_string(value: str) -> str:
    # A JSON string is a JavaScript string; "<" escaped so no "</script>" ends the tag.
    return json.dumps(value).replace("<", "\\u003c")
