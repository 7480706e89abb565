"""The Attuitive-compatible profile API: the seed's flow, search and pagination, isolation, errors."""

from __future__ import annotations

import re
import threading
from typing import Any

import httpx
import orjson
import pytest
from helpers import OTHER_TOKEN, TOKEN, WRITE_KEY, Server, basic, bearer
from starlette.testclient import TestClient

USER = re.compile(r"^usr_[A-Za-z0-9]{16}$")
TIME = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
AUTH = bearer(TOKEN)


def create(client: TestClient, identifiers: Any = None, traits: Any = None, token: str = TOKEN) -> dict[str, Any]:
    body = {k: v for k, v in (("identifiers", identifiers), ("traits", traits)) if v is not None}
    answer = client.post("/identify", json=body, headers=bearer(token))
    assert answer.status_code == 200, answer.text
    return answer.json()  # type: ignore[no-any-return]


def test_the_seed_flow(client: TestClient) -> None:
    user = create(client, {"email": "jane@example.com"}, {"plan": "pro", "lastPurchaseDate": "13/04/2025"})
    assert list(user) == ["id", "workspaceId", "identifiers", "traits", "createdAt", "updatedAt"]
    assert USER.match(user["id"]) and user["workspaceId"] == "ws_TestWorkspace001"
    assert TIME.match(user["createdAt"]) and user["updatedAt"] is None

    answer = client.post(
        f"/track/{user['id']}",
        json={"traits": {"plan": "enterprise", "lastOrderNumber": "O123", "lastPurchaseDate": None}},
        headers=AUTH,
    )
    assert answer.status_code == 200
    updated = answer.json()
    assert list(updated) == ["id", "workspaceId", "identifiers", "traits", "createdAt", "updatedAt"]
    assert updated["traits"] == {"plan": "enterprise", "lastOrderNumber": "O123"}  # override, add, remove
    assert updated["identifiers"] == {"email": "jane@example.com"}
    assert updated["createdAt"] == user["createdAt"]
    assert TIME.match(updated["updatedAt"]) and updated["updatedAt"] >= user["createdAt"]
    assert client.get(f"/identify/{user['id']}", headers=AUTH).json() == updated

    again = client.post(f"/track/{user['id']}", json={"traits": {"visits": 2}}, headers=AUTH).json()
    assert again["traits"] == {"plan": "enterprise", "lastOrderNumber": "O123", "visits": 2}  # unsent keys persist
    assert again["updatedAt"] >= updated["updatedAt"] and again["createdAt"] == user["createdAt"]


def test_nested_objects_are_replaced_whole_not_merged(client: TestClient) -> None:
    user = create(client, {"email": "a@b.c"}, {"address": {"city": "Paris", "street": "Rue 1"}})
    answer = client.post(f"/track/{user['id']}", json={"traits": {"address": {"city": "Lyon"}}}, headers=AUTH)
    assert answer.json()["traits"] == {"address": {"city": "Lyon"}}


def test_update_identifiers_appends_merges_and_removes(client: TestClient) -> None:
    user = create(client, {"email": "a@b.c", "phone": "+33 1"}, {"t": 1})
    answer = client.post(f"/identify/{user['id']}", json={"identifiers": {"phone": None, "crmId": "c-9"}}, headers=AUTH)
    assert answer.status_code == 200
    assert answer.json()["identifiers"] == {"email": "a@b.c", "crmId": "c-9"}
    assert answer.json()["traits"] == {"t": 1}


def test_delete(client: TestClient) -> None:
    user = create(client, {"email": "gone@b.c"})
    answer = client.delete(f"/identify/{user['id']}", headers=AUTH)
    assert answer.status_code == 200 and answer.json() == {"id": user["id"], "deleted": True}
    assert client.get(f"/identify/{user['id']}", headers=AUTH).status_code == 404
    assert client.delete(f"/identify/{user['id']}", headers=AUTH).status_code == 404


def test_api_v1_prefix_serves_the_same_api(client: TestClient) -> None:
    user = create(client, {"email": "p@b.c"})
    assert client.get(f"/api/v1/identify/{user['id']}", headers=AUTH).json()["id"] == user["id"]


# --- search ---------------------------------------------------------------------------------------


def search(client: TestClient, query: str, token: str = TOKEN) -> httpx.Response:
    return client.get(f"/identify{query}", headers=bearer(token))  # type: ignore[return-value]


def test_search_exact_nested_and_url_encoded(client: TestClient) -> None:
    jane = create(client, {"email": "jane@x.com", "name": {"first": "Jane", "last": "Doe"}, "phone": "+44 7700"})
    john = create(client, {"email": "john@x.com", "name": {"first": "John", "last": "Doe"}, "age": 34, "vip": True})
    create(client, {"email": "JANE@x.com"})

    def ids(query: str) -> list[str]:
        answer = search(client, query)
        assert answer.status_code == 200, answer.text
        return [u["id"] for u in answer.json()["data"]]

    assert ids("?email=jane@x.com") == [jane["id"]]  # exact and case-sensitive
    assert ids("?name.last=Doe") == [jane["id"], john["id"]]
    assert ids("?name.last=Doe&name.first=John") == [john["id"]]  # every parameter must match
    assert ids("?phone=%2B44%207700") == [jane["id"]]
    assert ids("?phone=+44 7700") == []  # an unencoded + is a space
    assert ids("?age=34&vip=true") == [john["id"]]
    assert ids("?name=Doe") == []
    assert ids("?missing.path=x") == []
    assert len(ids("")) == 3


def test_pagination_visits_every_user_exactly_once(client: TestClient) -> None:
    created = [create(client, {"n": i, "cohort": "a" if i % 2 else "b"})["id"] for i in range(250)]
    seen: list[str] = []
    url = "/identify?limit=100"
    pages = 0
    while url:
        answer = client.get(url, headers=AUTH)
        assert answer.status_code == 200
        page = answer.json()
        assert page["meta"]["limit"] == 100
        assert page["meta"]["url"] == url
        assert (page["meta"]["previousPageUrl"] is None) == (pages == 0)
        seen += [u["id"] for u in page["data"]]
        url = page["meta"]["nextPageUrl"]
        pages += 1
    assert pages == 3 and seen == created

    # backwards from the last page, through previousPageUrl
    last = client.get("/identify?limit=100", headers=AUTH).json()["meta"]["nextPageUrl"]
    last = client.get(last, headers=AUTH).json()["meta"]["nextPageUrl"]
    back = client.get(last, headers=AUTH).json()["meta"]["previousPageUrl"]
    assert [u["id"] for u in client.get(back, headers=AUTH).json()["data"]] == created[100:200]

    # filters are kept in the page links
    first = client.get("/identify?cohort=a&limit=50", headers=AUTH).json()
    assert "cohort=a" in first["meta"]["nextPageUrl"]
    second = client.get(first["meta"]["nextPageUrl"], headers=AUTH).json()
    assert [u["id"] for u in first["data"] + second["data"]] == created[1::2][:100]


@pytest.mark.parametrize("limit", ["0", "101", "-1", "ten", "1.5", ""])
def test_bad_limit_is_400(client: TestClient, limit: str) -> None:
    answer = search(client, f"?limit={limit}")
    if limit == "":
        assert answer.status_code == 400
    assert answer.status_code == 400 and answer.json()["message"] == "Invalid limit"


@pytest.mark.parametrize("token", ["garbage", "eyJhZnRlciI6IDF9", "e30", "eyJhZnRlciI6LTF9"])
def test_bad_page_token_is_400(client: TestClient, token: str) -> None:
    answer = search(client, f"?pageToken={token}")
    assert answer.status_code == 400 and answer.json()["message"] == "Invalid pageToken"


def test_page_token_of_another_search_is_400(client: TestClient) -> None:
    for i in range(3):
        create(client, {"email": f"{i}@x"})
    token_url = search(client, "?limit=1").json()["meta"]["nextPageUrl"]
    token = token_url.split("pageToken=")[1]
    assert search(client, f"?email=0@x&pageToken={token}").status_code == 400


# --- isolation ------------------------------------------------------------------------------------


def test_workspaces_are_isolated_on_every_endpoint(client: TestClient) -> None:
    mine = create(client, {"email": "same@x.com"}, {"a": 1})
    theirs = create(client, {"email": "same@x.com"}, {"b": 2}, token=OTHER_TOKEN)
    assert theirs["workspaceId"] == "ws_OtherWorkspace02"
    for user, token in ((mine, OTHER_TOKEN), (theirs, TOKEN)):
        other = bearer(token)
        not_found = [
            client.get(f"/identify/{user['id']}", headers=other),
            client.post(f"/identify/{user['id']}", json={"identifiers": {"x": 1}}, headers=other),
            client.post(f"/track/{user['id']}", json={"traits": {"x": 1}}, headers=other),
            client.delete(f"/identify/{user['id']}", headers=other),
        ]
        for answer in not_found:
            assert answer.status_code == 404
            assert answer.json()["message"] == "User with ID not found"
    assert [u["id"] for u in search(client, "?email=same@x.com").json()["data"]] == [mine["id"]]
    assert [u["id"] for u in search(client, "?email=same@x.com", OTHER_TOKEN).json()["data"]] == [theirs["id"]]
    assert client.get(f"/identify/{mine['id']}", headers=AUTH).json()["traits"] == {"a": 1}  # untouched


# --- documented errors ----------------------------------------------------------------------------


def expect(answer: Any, status: int, message: str, more_info: str | None = None) -> None:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert body["status"] == status and body["message"] == message
    assert isinstance(body["moreInfo"], str) and body["moreInfo"]
    if more_info:
        assert body["moreInfo"] == more_info
    assert answer.headers["x-request-id"]


@pytest.mark.parametrize(
    "path", ["/identify/usr_short", "/identify/user_AAAAAAAAAAAAAAAA", "/identify/usr_AAAAAAAAAAAAAAA!"]
)
def test_invalid_user_id(client: TestClient, path: str) -> None:
    expect(
        client.get(path, headers=AUTH),
        400,
        "Invalid user ID",
        "The provided user ID is not in the correct format of 'usr_[A-Za-z0-9]{16}'.",
    )
    expect(
        client.post(path.replace("/identify/", "/track/"), json={"traits": {}}, headers=AUTH), 400, "Invalid user ID"
    )


def test_user_not_found(client: TestClient) -> None:
    expect(
        client.get("/identify/usr_AAAAAAAAAAAAAAAA", headers=AUTH),
        404,
        "User with ID not found",
        "A user with the provided ID does not exist.",
    )
    expect(
        client.post("/track/usr_AAAAAAAAAAAAAAAA", json={"traits": {"a": 1}}, headers=AUTH),
        404,
        "User with ID not found",
    )


@pytest.mark.parametrize("identifiers", [[], "x", 5, True])
def test_invalid_identifiers(client: TestClient, identifiers: Any) -> None:
    expect(
        client.post("/identify", json={"identifiers": identifiers}, headers=AUTH),
        400,
        "Invalid identifiers",
        "The provided identifiers should be a valid JSON object.",
    )


@pytest.mark.parametrize("path", ["/identify", "/track/{id}", "/identify/{id}"])
def test_invalid_traits(client: TestClient, path: str) -> None:
    user = create(client, {"e": 1})
    expect(
        client.post(path.format(id=user["id"]), json={"traits": ["x"]}, headers=AUTH),
        400,
        "Invalid traits",
        "The provided traits should be a valid JSON object.",
    )


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic dG9rOg=="}])
def test_unauthorized(client: TestClient, headers: dict[str, str]) -> None:
    answer = client.get("/identify", headers=headers)
    assert answer.status_code == 401 and answer.json()["status"] == 401
    assert client.post("/identify", json={}, headers=headers).status_code == 401


def test_write_key_does_not_open_the_profile_api(client: TestClient) -> None:
    assert client.get("/identify", headers=basic(WRITE_KEY)).status_code == 401


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_body_is_415(client: TestClient, content_type: str | None) -> None:
    headers = AUTH | ({"Content-Type": content_type} if content_type else {})
    expect(client.post("/identify", content=b'{"identifiers": {}}', headers=headers), 415, "Unsupported media type")


def test_malformed_json_body_is_400(client: TestClient) -> None:
    answer = client.post("/identify", content=b'{"identifiers": ', headers=AUTH | {"Content-Type": "application/json"})
    expect(answer, 400, "Invalid JSON")


def test_oversized_body_is_413(client: TestClient) -> None:
    body = orjson.dumps({"traits": {"blob": "x" * 600_000}})
    answer = client.post("/identify", content=body, headers=AUTH | {"Content-Type": "application/json"})
    expect(answer, 413, "Payload too large")


# --- link with the event stream -----------------------------------------------------------------


def test_segment_identify_with_a_profile_user_id_merges_traits(client: TestClient) -> None:
    user = create(client, {"email": "e@x.com"}, {"plan": "free", "old": True})
    single = {"userId": user["id"], "traits": {"plan": "pro", "old": None}}
    assert client.post("/v1/i", content=orjson.dumps(single), headers=basic(WRITE_KEY)).status_code == 200
    assert client.get(f"/identify/{user['id']}", headers=AUTH).json()["traits"] == {"plan": "pro"}
    batch = {
        "batch": [
            {"type": "identify", "userId": user["id"], "traits": {"seats": 5}},
            {"type": "identify", "userId": "usr_NotAProfile0000", "traits": {"x": 1}},
        ]
    }
    assert client.post("/v1/batch", content=orjson.dumps(batch), headers=basic(WRITE_KEY)).status_code == 200
    assert client.get(f"/identify/{user['id']}", headers=AUTH).json()["traits"] == {"plan": "pro", "seats": 5}


def test_a_null_reserved_trait_removes_it_and_a_flagged_identify_still_merges(client: TestClient) -> None:
    # `email: null` and `age: "36"` used to be answered 400 (so the profile never changed).
    user = create(client, {"email": "e@x.com"}, {"email": "e@x.com", "age": 30, "plan": "free"})
    single = {"userId": user["id"], "traits": {"email": None, "age": "36"}}
    assert client.post("/v1/identify", content=orjson.dumps(single), headers=basic(WRITE_KEY)).status_code == 200
    assert client.get(f"/identify/{user['id']}", headers=AUTH).json()["traits"] == {"age": "36", "plan": "free"}


def test_identify_from_another_workspace_source_does_not_touch_the_profile(client: TestClient) -> None:
    user = create(client, {"email": "e@x.com"}, {"plan": "free"})
    message = {"userId": user["id"], "traits": {"plan": "hacked"}}
    assert client.post("/v1/identify", content=orjson.dumps(message), headers=basic("WK_OTHER")).status_code == 200
    assert client.get(f"/identify/{user['id']}", headers=AUTH).json()["traits"] == {"plan": "free"}


# --- concurrency, against a real uvicorn process ---------------------------------------------------


def test_fifty_concurrent_track_calls_keep_all_fifty_keys(server: Server) -> None:
    with httpx.Client(base_url=server.url, headers=AUTH) as http:
        user = http.post("/identify", json={"identifiers": {"email": "c@x.com"}, "traits": {}}).json()
    barrier = threading.Barrier(50)
    statuses: list[int] = []

    def writer(n: int) -> None:
        with httpx.Client(base_url=server.url, headers=AUTH, timeout=30) as http:
            barrier.wait()
            statuses.append(http.post(f"/track/{user['id']}", json={"traits": {f"key{n}": n}}).status_code)

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses == [200] * 50
    final = httpx.get(f"{server.url}/identify/{user['id']}", headers=AUTH).json()
    assert final["traits"] == {f"key{n}": n for n in range(50)}
