"""The JOOR sandbox over real loopback HTTP: data, formats, auth, paging, metering and injected faults."""

from __future__ import annotations

import base64
import json
import re
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote
from xml.etree.ElementTree import Element, ParseError

import httpx
import pytest

from joor_pipeline.joor.parse import xml_fromstring
from joor_pipeline.joor.shapes import GROUP_TAGS, LIST_ITEM_TAGS
from joor_pipeline.sandbox import Faults, Sandbox, SandboxConfig, generate_connections, run_sandbox
from joor_pipeline_tests.fake_time import FakeTime

SEEDS = Path(__file__).resolve().parent / "seeds"
TOKEN = "sandbox-token"
V2_AUTH = {"Authorization": "OAuth2 " + base64.b64encode(TOKEN.encode()).decode()}
# JOOR does not process a call without a content type (the sandbox is strict by default): every call sends one.
JSON = {**V2_AUTH, "Accept": "application/json", "Content-Type": "application/json"}
XML = {**V2_AUTH, "Accept": "application/xml", "Content-Type": "application/xml"}
LOG_ID = re.compile(rb"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")
GOOD_FORM = {
    "client_id": "sandbox-client",
    "client_secret": "sandbox-client-secret",
    "grant_type": "password",
    "username": "sandbox-user",
    "password": "sandbox-password",
}


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    with run_sandbox(connections=30, rate_limit_credits=0) as sb:
        yield sb


@pytest.fixture
def client(sandbox: Sandbox) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sandbox.base_url, timeout=5) as c:
        yield c


def wire_text(value: Any) -> Any:
    """A JSON document with every leaf spelled as XML spells it."""
    if isinstance(value, dict):
        return {k: wire_text(v) for k, v in value.items()}
    if isinstance(value, list):
        return [wire_text(v) for v in value]
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return repr(value)
    assert isinstance(value, str), f"unexpected JSON leaf {value!r}"
    return value


def xml_value(el: Element) -> Any:
    """An XML element as the JSON shape: wrappers are lists, groups and items with children are dicts."""
    if el.tag in LIST_ITEM_TAGS:
        return [xml_value(child) for child in el]
    if el.tag in GROUP_TAGS or len(el):
        return {child.tag: xml_value(child) for child in el}
    return el.text or ""


def xml_document(body: bytes) -> dict[str, Any]:
    root = xml_fromstring(body)
    assert root.tag == "connections"
    return {child.tag: xml_value(child) for child in root}


def token(client: httpx.Client, sandbox: Sandbox) -> str:
    response = client.post(sandbox.auth_url, files={k: (None, v) for k, v in GOOD_FORM.items()})
    assert response.status_code == 200, response.text
    return str(response.json()["access_token"])


def bearer(access_token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {access_token}", "Accept": "application/json", "Content-Type": "application/json"}


# --- data -----------------------------------------------------------------------------------------------------


def test_generate_connections_is_deterministic_and_prefix_stable() -> None:
    first = generate_connections(300, 11)
    assert first == generate_connections(300, 11)
    assert generate_connections(40, 11) == first[:40]
    assert generate_connections(300, 12)[1:] != first[1:]
    assert generate_connections(0, 11) == []


def test_generated_connections_have_unique_ids_and_no_nulls() -> None:
    connections = generate_connections(2000, 7)
    assert len({str(c["customer_account_id"]) for c in connections}) == 2000
    assert len({c["customer_code"] for c in connections}) == 2000
    assert all(len(c["customer_code"]) <= 50 for c in connections)
    address_ids = [str(a["billing_address_id"]) for c in connections for a in c["billing"]["billing_addresses"]] + [
        str(a["shipping_address_id"]) for c in connections for a in c["shipping"]["shipping_addresses"]
    ]
    assert len(address_ids) == len(set(address_ids))
    assert "null" not in json.dumps(connections)


def test_generated_connections_carry_the_wire_quirks() -> None:
    connections = generate_connections(2000, 7)[1:]
    dump = json.dumps(connections, ensure_ascii=False)
    assert isinstance(connections[0]["customer_account_id"], int)
    assert any(isinstance(c["customer_account_id"], str) for c in connections)
    assert '"payment_method_is_default": "True"' in dump or '"payment_method_is_default": "False"' in dump
    assert '"division_id": ""' in dump
    assert any(
        isinstance(d["amount"], float) and not d["amount"].is_integer() for c in connections for d in c["discounts"]
    )
    for city in ("Zürich", "Malmö", "São Paulo", "東京", "Ærø", "Łódź"):
        assert city in dump
    dangling = [
        door
        for c in connections
        for door in c["doors"]
        if door["door_shipping_address_id"]
        not in [a["shipping_address_id"] for a in c["shipping"]["shipping_addresses"]]
    ]
    doors = sum(len(c["doors"]) for c in connections)
    assert 0 < len(dangling) < doors * 0.05
    no_default = [
        c
        for c in connections
        if not any(p["payment_method_is_default"] in (True, "True") for p in c["billing"]["payment_methods"])
    ]
    assert 0 < len(no_default) < len(connections) * 0.15


# --- reading --------------------------------------------------------------------------------------------------


def test_seed_connection_comes_first_exactly_as_in_the_seed_document(client: httpx.Client) -> None:
    seed = json.loads((SEEDS / "connection-example.json").read_text(encoding="utf-8"))["connections"][0]
    response = client.get("/v2/connection/", headers=JSON)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json; charset=utf-8"
    assert response.json()["connections"][0] == seed
    by_code = client.get("/v2/connection/customer_code/JBNY/", headers=JSON).json()
    assert by_code["connections"] == [seed]
    assert by_code["response"]["code"] == 0
    assert client.get("/v2/connection/24181", headers=JSON).json()["connections"] == [seed]


def test_same_seed_gives_the_same_bytes_apart_from_log_id() -> None:
    bodies = []
    for _ in range(2):
        with run_sandbox(connections=40, seed=3) as sb, httpx.Client(base_url=sb.base_url, timeout=5) as c:
            pages = [c.get("/v2/connection/", params={"count": 40}, headers=h).content for h in (JSON, XML)]
            bodies.append([LOG_ID.sub(b"<log_id>", page) for page in pages])
    assert bodies[0] == bodies[1]
    with run_sandbox(connections=40, seed=4) as sb, httpx.Client(base_url=sb.base_url, timeout=5) as c:
        other = c.get("/v2/connection/", params={"count": 40}, headers=JSON).content
    assert LOG_ID.sub(b"<log_id>", other) != bodies[0][0]


def test_pagination_walks_every_connection_exactly_once(sandbox: Sandbox, client: httpx.Client) -> None:
    seen: list[str] = []
    start, pages = 0, 0
    while True:
        body = client.get("/v2/connection/", params={"start_from": start, "count": 7}, headers=JSON).json()
        assert body["response"]["start_from"] == start
        assert body["response"]["count"] == "30"
        seen += [str(c["customer_account_id"]) for c in body["connections"]]
        pages += 1
        start = body["response"]["next_start"]
        if start == 0:
            break
    assert pages == 5
    assert seen == [str(c["customer_account_id"]) for c in sandbox.connections]
    assert len(set(seen)) == 30


def test_default_page_size_clamping_and_past_the_end(client: httpx.Client) -> None:
    assert len(client.get("/v2/connection/", headers=JSON).json()["connections"]) == 30
    with (
        run_sandbox(connections=30, default_page_size=4, max_page_size=10) as sb,
        httpx.Client(base_url=sb.base_url, timeout=5) as c,
    ):
        first = c.get("/v2/connection", headers=JSON).json()
        clamped = c.get("/v2/connection/", params={"count": 500}, headers=JSON).json()
    assert (len(first["connections"]), first["response"]["next_start"]) == (4, 4)
    assert (len(clamped["connections"]), clamped["response"]["next_start"]) == (10, 10)
    past = client.get("/v2/connection/", params={"start_from": 99}, headers=JSON)
    assert past.json()["connections"] == []
    assert past.json()["response"]["next_start"] == 0
    past_xml = client.get("/v2/connection/", params={"start_from": 99}, headers=XML)
    assert b"<connections />" in past_xml.content


@pytest.mark.parametrize("params", [{"start_from": "x"}, {"count": "-1"}, {"count": "0"}, {"start_from": "1.5"}])
def test_bad_paging_integers_are_a_400_envelope(client: httpx.Client, params: dict[str, str]) -> None:
    response = client.get("/v2/connection/", params=params, headers=JSON)
    assert response.status_code == 400
    assert response.json()["response"]["code"] == 400
    assert response.json()["response"]["log_id"]


def test_xml_and_json_carry_the_same_data(client: httpx.Client) -> None:
    as_json = client.get("/v2/connection/", params={"count": 100}, headers=JSON).json()
    as_xml = client.get("/v2/connection/", params={"count": 100}, headers=XML)
    assert as_xml.headers["content-type"] == "application/xml; charset=utf-8"
    parsed = xml_document(as_xml.content)
    expected = wire_text(as_json)
    # Each rendering got its own log_id.
    parsed["response"].pop("log_id")
    expected["response"].pop("log_id")
    assert parsed == expected
    assert len(parsed["connections"]) == 30


def test_xml_spells_quirks_as_documented() -> None:
    connections = generate_connections(400, 7)
    quirky = next(
        c for c in connections if any(p["payment_method_is_default"] == "True" for p in c["billing"]["payment_methods"])
    )
    with run_sandbox(connections=400, rate_limit_credits=0) as sb, httpx.Client(base_url=sb.base_url, timeout=5) as c:
        body = c.get(f"/v2/connection/customer_code/{quirky['customer_code']}/", headers=XML).content
        json_body = c.get(f"/v2/connection/customer_code/{quirky['customer_code']}/", headers=JSON).json()
    assert b"<payment_method_is_default>True</payment_method_is_default>" in body
    assert b"<billing_code />" in body or b"<billing_address_2 />" in body
    assert xml_document(body)["connections"] == wire_text(json_body["connections"])


def test_customer_codes_are_url_decoded() -> None:
    odd = [c for c in generate_connections(400, 7) if not c["customer_code"].isalnum()]
    assert odd, "the generator should produce codes needing URL encoding"
    with run_sandbox(connections=400, rate_limit_credits=0) as sb, httpx.Client(base_url=sb.base_url, timeout=5) as c:
        for connection in odd[:3]:
            code = connection["customer_code"]
            body = c.get(f"/v2/connection/customer_code/{quote(code, safe='')}/", headers=JSON).json()
            assert body["connections"][0]["customer_code"] == code


@pytest.mark.parametrize("path", ["/v2/connection/customer_code/NOPE/", "/v2/connection/1/", "/v2/connection/abc/"])
def test_unknown_connection_is_404_with_envelope(client: httpx.Client, path: str) -> None:
    response = client.get(path, headers=JSON)
    assert response.status_code == 404
    body = response.json()
    assert body["response"]["code"] == 404
    assert body["response"]["comment"] == "Connection not found"
    assert body["response"]["log_id"]
    assert "connections" not in body
    as_xml = client.get(path, headers=XML)
    assert as_xml.status_code == 404
    assert xml_document(as_xml.content)["response"]["code"] == "404"


def test_other_paths_and_methods(client: httpx.Client, sandbox: Sandbox) -> None:
    assert client.get("/v2/order/", headers=JSON).status_code == 404
    assert client.get("/", headers=JSON).status_code == 404
    assert client.post("/v2/connection/", headers=JSON).status_code == 405
    assert client.delete("/v2/connection/24181/", headers=JSON).status_code == 405
    assert client.get(sandbox.auth_url).status_code == 405


# --- content negotiation --------------------------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, "*/*", "text/html", "application/*"])
def test_no_supported_accept_is_406(client: httpx.Client, accept: str | None) -> None:
    headers = {**V2_AUTH, "Content-Type": "application/json"}
    if accept is not None:
        headers["Accept"] = accept
    request = client.build_request("GET", "/v2/connection/", headers=headers)
    if accept is None:
        del request.headers["Accept"]
    response = client.send(request)
    assert response.status_code == 406
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()["response"]
    assert body["code"] == 406
    assert body["comment"] == "Calls made without the content MIME type are not processed"


@pytest.mark.parametrize("content_type", [None, "text/plain", "multipart/form-data"])
@pytest.mark.parametrize("path", ["/v2/connection/", "/v2/connection/24181/", "/v2/connection/customer_code/JBNY/"])
def test_a_call_without_a_content_type_is_not_processed(
    client: httpx.Client, sandbox: Sandbox, content_type: str | None, path: str
) -> None:
    """JOOR's conventions page: "calls made without the Content MIME Type are not processed" (strict by default)."""
    headers = {**V2_AUTH, "Accept": "application/json"}
    if content_type is not None:
        headers["Content-Type"] = content_type
    response = client.get(path, headers=headers)
    assert response.status_code == 415
    body = response.json()["response"]
    assert body["code"] == 415 and body["log_id"]
    assert body["comment"].startswith("Calls made without the Content MIME Type are not processed")
    sandbox.config.require_content_type = False
    assert client.get(path, headers=headers).status_code == 200
    assert sandbox.stats.credits_used == 1  # the refused call cost nothing


@pytest.mark.parametrize(
    ("accept", "params", "expected"),
    [
        ("text/xml", {}, "application/xml"),
        ("text/html, application/xml;q=0.5, application/json;q=0.9", {}, "application/json"),
        ("application/json", {"return_format": "xml"}, "application/xml"),
        ("*/*", {"return_format": "json"}, "application/json"),
    ],
)
def test_format_selection(client: httpx.Client, accept: str, params: dict[str, str], expected: str) -> None:
    response = client.get(
        "/v2/connection/24181/",
        params=params,
        headers={**V2_AUTH, "Accept": accept, "Content-Type": "application/json"},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == f"{expected}; charset=utf-8"


# --- authentication -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "OAuth2 " + base64.b64encode(b"wrong-token").decode(),
        "OAuth2 sandbox-token",
        "Bearer not-a-token",
        "Basic " + base64.b64encode(TOKEN.encode()).decode(),
    ],
)
def test_bad_credentials_are_401(client: httpx.Client, authorization: str | None) -> None:
    headers = {"Accept": "application/json", "Content-Type": "application/json"}
    if authorization:
        headers["Authorization"] = authorization
    response = client.get("/v2/connection/", params={"account": "24180"}, headers=headers)
    assert response.status_code == 401
    assert response.json()["response"]["code"] == 401
    assert response.json()["response"]["comment"] == "Invalid authentication credentials"
    if authorization:
        credential = authorization.split(" ", 1)[1]
        assert credential not in response.text
        assert all(credential not in value for value in response.headers.values())


def test_v4_token_flow_multipart_and_urlencoded(client: httpx.Client, sandbox: Sandbox) -> None:
    multipart = token(client, sandbox)
    encoded = client.post(sandbox.auth_url, data=GOOD_FORM)
    assert encoded.status_code == 200
    body = encoded.json()
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 36000
    assert {"refresh_token", "refresh_expires_in", "scope"} <= set(body)
    assert body["access_token"] != multipart
    for access_token in (multipart, body["access_token"]):
        ok = client.get("/v2/connection/24181/", params={"account": "24180"}, headers=bearer(access_token))
        assert ok.status_code == 200
        assert access_token not in ok.text
    wrong_account = client.get("/v2/connection/24181/", params={"account": "1"}, headers=bearer(multipart))
    no_account = client.get("/v2/connection/24181/", headers=bearer(multipart))
    assert (wrong_account.status_code, no_account.status_code) == (401, 401)
    assert sandbox.stats.tokens_issued == 2


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"password": "nope"}, 401, "invalid_grant"),
        ({"username": "someone"}, 401, "invalid_grant"),
        ({"client_secret": "nope"}, 401, "invalid_client"),
        ({"grant_type": "client_credentials"}, 400, "unsupported_grant_type"),
        ({"password": ""}, 400, "invalid_request"),
    ],
)
def test_token_endpoint_rejects_bad_forms(
    client: httpx.Client, sandbox: Sandbox, change: dict[str, str], status: int, error: str
) -> None:
    form = {**GOOD_FORM, **change}
    response = client.post(sandbox.auth_url, files={k: (None, v) for k, v in form.items()})
    assert response.status_code == status
    assert response.json()["error"] == error
    assert "nope" not in response.text and "sandbox-password" not in response.text
    assert sandbox.stats.tokens_issued == 0


def test_token_expires_after_ttl_and_revoke_kills_live_tokens() -> None:
    fake = FakeTime()
    with (
        run_sandbox(connections=3, token_ttl=60, **fake.pair()) as sb,
        httpx.Client(base_url=sb.base_url, timeout=5) as c,
    ):
        short = token(c, sb)
        params = {"account": "24180"}
        assert c.get("/v2/connection/", params=params, headers=bearer(short)).status_code == 200
        fake.advance(59.99)
        assert c.get("/v2/connection/", params=params, headers=bearer(short)).status_code == 200
        fake.advance(0.01)
        assert c.get("/v2/connection/", params=params, headers=bearer(short)).status_code == 401
        fresh = token(c, sb)
        assert c.get("/v2/connection/", params=params, headers=bearer(fresh)).status_code == 200
        sb.revoke_tokens()
        assert c.get("/v2/connection/", params=params, headers=bearer(fresh)).status_code == 401
        assert c.get("/v2/connection/", headers=JSON).status_code == 200


# --- rate limiting --------------------------------------------------------------------------------------------


def test_rate_limit_throttles_past_the_budget_and_recovers() -> None:
    fake = FakeTime()
    with run_sandbox(connections=3, rate_limit_credits=5, rate_limit_window=300.0, **fake.pair()) as sb:
        with httpx.Client(base_url=sb.base_url, timeout=5) as c:
            # Unauthenticated calls are not metered.
            assert c.get("/v2/connection/", headers={**JSON, "Authorization": "OAuth2 eA=="}).status_code == 401
            assert [c.get("/v2/connection/", headers=JSON).status_code for _ in range(5)] == [200] * 5
            throttled = c.get("/v2/connection/", headers=XML)
            assert throttled.status_code == 429
            assert throttled.headers["X-Throttling-Account-Id"] == "24180"
            assert throttled.headers["Retry-After"] == "300"
            assert xml_document(throttled.content)["response"]["code"] == "429"
            fake.advance(120.5)
            # Retry-After: the rest of the window, in whole seconds, rounded up.
            assert c.get("/v2/connection/", headers=JSON).headers["Retry-After"] == "180"
            assert sb.stats.credits_used == 5
            assert sb.stats.throttled == 2
            fake.advance(179.5)
            assert c.get("/v2/connection/", headers=JSON).status_code == 200
            # A token costs 5 credits: with 4 left in this window it is refused.
            refused = c.post(sb.auth_url, data=GOOD_FORM)
            assert refused.status_code == 429
            assert refused.headers["X-Throttling-Account-Id"] == "24180"
        assert sb.stats.credits_used == 6


def test_retry_after_can_be_switched_off() -> None:
    with (
        run_sandbox(connections=3, rate_limit_credits=1, retry_after=False) as sb,
        httpx.Client(base_url=sb.base_url, timeout=5) as c,
    ):
        c.get("/v2/connection/", headers=JSON)
        throttled = c.get("/v2/connection/", headers=JSON)
    assert throttled.status_code == 429
    assert "Retry-After" not in throttled.headers
    assert throttled.headers["X-Throttling-Account-Id"] == "24180"


# --- faults ---------------------------------------------------------------------------------------------------


def test_scripted_faults_in_order(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.script.extend(["503", "ok", "500", "502", "429", "garbage"])
    statuses = [client.get("/v2/connection/", headers=JSON) for _ in range(6)]
    assert [r.status_code for r in statuses] == [503, 200, 500, 502, 429, 200]
    assert statuses[0].json()["response"]["code"] == 503
    assert statuses[4].headers["Retry-After"] == "1"
    garbage = statuses[5].content
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage)
    with pytest.raises(ParseError):
        xml_fromstring(garbage)
    assert client.get("/v2/connection/", headers=JSON).status_code == 200
    assert sandbox.faults.script == []


def test_scripted_5xx_follows_the_negotiated_format(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.script.append("503")
    response = client.get("/v2/connection/", headers=XML)
    assert response.status_code == 503
    assert xml_document(response.content)["response"]["code"] == "503"


def test_drop_closes_without_a_response(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.script.append("drop")
    with pytest.raises(httpx.TransportError):
        client.get("/v2/connection/", headers=JSON)
    assert client.get("/v2/connection/", headers=JSON).status_code == 200
    assert sandbox.stats.dropped == 1


def test_truncate_sends_half_the_promised_body(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.script.append("truncate")
    with pytest.raises(httpx.TransportError):
        client.get("/v2/connection/", headers=JSON)
    assert client.get("/v2/connection/", headers=JSON).status_code == 200


def test_faults_apply_to_the_token_endpoint(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.script.extend(["503", "drop"])
    assert client.post(sandbox.auth_url, data=GOOD_FORM).status_code == 503
    with pytest.raises(httpx.TransportError):
        client.post(sandbox.auth_url, data=GOOD_FORM)
    assert client.post(sandbox.auth_url, data=GOOD_FORM).status_code == 200


def test_rate_limit_storm_and_random_faults(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.rate_limit_storm = 2
    assert [client.get("/v2/connection/", headers=JSON).status_code for _ in range(3)] == [429, 429, 200]
    assert sandbox.stats.credits_used == 1
    sandbox.faults.error_rate = 1.0
    statuses = {client.get("/v2/connection/24181/", headers=JSON).status_code for _ in range(12)}
    assert statuses <= {500, 502, 503}
    assert len(statuses) > 1
    sandbox.faults = Faults(drop_rate=1.0)
    with pytest.raises(httpx.TransportError):
        client.get("/v2/connection/", headers=JSON)


def test_stuck_pagination_repeats_the_cursor(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.stuck_pagination = True
    first = client.get("/v2/connection/", params={"count": 10}, headers=JSON).json()["response"]
    assert first["next_start"] == 10
    second = client.get("/v2/connection/", params={"start_from": 10, "count": 10}, headers=JSON).json()
    assert second["response"]["next_start"] == 10
    assert len(second["connections"]) == 10


def test_error_code_is_a_joor_level_failure(sandbox: Sandbox, client: httpx.Client) -> None:
    sandbox.faults.error_code = 1001
    for path in ("/v2/connection/", "/v2/connection/24181/"):
        response = client.get(path, headers=JSON)
        assert response.status_code == 200
        assert response.json()["response"]["code"] == 1001
        assert response.json()["response"]["comment"]
        assert "connections" not in response.json()


def test_unknown_script_entries_are_rejected() -> None:
    with pytest.raises(ValueError, match="unknown fault script"):
        Faults(script=["boom"])


def test_latency_and_concurrency_are_counted() -> None:
    # The injected latency is a barrier: no request is answered before all four are in the server at once.
    together = threading.Barrier(4, timeout=30)
    latencies: list[float] = []

    def sleep(seconds: float) -> None:
        latencies.append(seconds)
        together.wait()

    with run_sandbox(connections=3, faults=Faults(latency_ms=150), sleep=sleep) as sb:
        statuses: list[int] = []

        def fetch() -> None:
            with httpx.Client(base_url=sb.base_url, timeout=5) as c:
                statuses.append(c.get("/v2/connection/", headers=JSON).status_code)

        threads = [threading.Thread(target=fetch) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses == [200] * 4
        assert latencies == [0.15] * 4
        assert sb.stats.max_concurrent == 4
        assert sb.stats.requests == 4
        assert sb.stats.by_status == {200: 4}
        sb.reset_stats()
        assert (sb.stats.requests, sb.stats.by_status, sb.stats.max_concurrent) == (0, {}, 0)


# --- the standalone process -----------------------------------------------------------------------------------


def test_cli_prints_its_address_and_stops_cleanly_on_sigterm() -> None:
    command = [
        *(sys.executable, "-m", "joor_pipeline.sandbox", "--port", "0", "--connections", "5", "--seed", "9"),
        *("--competing-rate", "0.5"),
    ]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        try:
            assert process.stdout is not None
            line = process.stdout.readline().strip()
            match = re.fullmatch(r"JOOR sandbox listening on (http://127\.0\.0\.1:\d+) \(5 connections, seed 9\)", line)
            assert match, line
            with httpx.Client(base_url=match.group(1), timeout=5) as c:
                assert c.get("/v2/connection/", headers=JSON).json()["response"]["count"] == "5"
            process.send_signal(signal.SIGTERM)
            assert process.wait(timeout=10) == 0
        finally:
            if process.poll() is None:
                process.kill()


def test_config_overrides_and_ephemeral_ports() -> None:
    config = SandboxConfig(connections=2, seed=5)
    with run_sandbox(config, port=0) as one, run_sandbox(config) as two:
        assert one.base_url != two.base_url
        assert one.auth_url == one.base_url + "/auth/"
        assert one.config.seed == 5
        assert one.connections == two.connections


# --- another integration of the same account -------------------------------------------------------------------


def test_spend_takes_the_accounts_credits_as_another_integration_would() -> None:
    fake = FakeTime()
    with run_sandbox(connections=3, rate_limit_credits=10, rate_limit_window=300.0, **fake.pair()) as sb:
        with httpx.Client(base_url=sb.base_url, timeout=5) as c:
            assert c.get("/v2/connection/", headers=JSON).status_code == 200
            assert sb.spend(20) == 9  # what was left of the window
            fake.advance(100.0)
            refused = c.get("/v2/connection/", headers=JSON)
            assert refused.status_code == 429
            assert refused.headers["Retry-After"] == "200"
            fake.advance(200.0)
            assert c.get("/v2/connection/", headers=JSON).status_code == 200
    assert sb.stats.competing_credits == 9
    assert sb.stats.credits_used == 2


def test_competing_rate_spends_steadily_window_by_window() -> None:
    """0.05 credits/s of a 10 per 100 s budget: the competitor alone uses half of every window."""
    fake = FakeTime()
    faults = Faults(competing_rate=0.05)
    with run_sandbox(connections=3, rate_limit_credits=10, rate_limit_window=100.0, faults=faults, **fake.pair()) as sb:
        with httpx.Client(base_url=sb.base_url, timeout=5) as c:
            assert c.get("/v2/connection/", headers=JSON).status_code == 200  # starts the competitor's clock
            fake.advance(60.0)  # 3 credits spent by the competitor in this window
            statuses = [c.get("/v2/connection/", headers=JSON).status_code for _ in range(8)]
            assert statuses == [200] * 6 + [429] * 2
            assert sb.stats.competing_credits == 3
            fake.advance(300.0)  # three more windows, about 5 credits each
            assert c.get("/v2/connection/", headers=JSON).status_code == 200
    assert 3 + 5 * 2 <= sb.stats.competing_credits <= 3 + 5 * 3


def test_pagination_gap_skips_connections() -> None:
    with run_sandbox(connections=30, rate_limit_credits=0, faults=Faults(pagination_gap=4)) as sb:
        with httpx.Client(base_url=sb.base_url, timeout=5) as c:
            first = c.get("/v2/connection/", params={"count": 10}, headers=JSON).json()["response"]
            last = c.get("/v2/connection/", params={"start_from": 20, "count": 10}, headers=JSON).json()["response"]
    assert first["next_start"] == 14
    assert last["next_start"] == 0
