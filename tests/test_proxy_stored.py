"""OpenAI's Stored Completions API served by the proxy from the store, through the official SDK."""

from __future__ import annotations

import httpx2 as httpx
import openai
import pytest

KEY = "sk-stored-test"


@pytest.fixture
def seeded(fake_openai, run_proxy, store_db, tmp_path):
    proxy = run_proxy(upstream=fake_openai.base_url, db=store_db, data_dir=str(tmp_path / "data"))
    c = openai.OpenAI(base_url=proxy.base_url, api_key=KEY, max_retries=0)
    ids = []
    for i in range(7):
        r = c.chat.completions.create(
            model="gpt-4o" if i % 2 else "gpt-4o-mini",
            messages=[{"role": "system", "content": "be brief"}, {"role": "user", "content": f"question {i}"}],
            metadata={"use_case": "demo" if i < 5 else "other", "i": str(i)},
            store=True,
        )
        ids.append(r.id)
    proxy.records()
    return proxy, c, ids


def test_list_with_auto_pagination_and_filters(seeded):
    proxy, c, ids = seeded
    assert [x.id for x in c.chat.completions.list(limit=2)] == ids  # auto-pagination over 4 pages
    page = c.chat.completions.list(limit=3)
    assert page.has_more is True and [x.id for x in page.data] == ids[:3]
    assert [x.id for x in c.chat.completions.list(order="desc")] == ids[::-1]
    demo = [x.id for x in c.chat.completions.list(metadata={"use_case": "demo"}, limit=2)]
    assert demo == ids[:5]
    assert [x.id for x in c.chat.completions.list(metadata={"use_case": "demo", "i": "3"})] == [ids[3]]
    assert [x.id for x in c.chat.completions.list(model="gpt-4o")] == [ids[1], ids[3], ids[5]]
    raw = httpx.get(proxy.base_url + "/chat/completions", params={"limit": 2})
    body = raw.json()
    assert body["object"] == "list" and body["first_id"] == ids[0] and body["last_id"] == ids[1]
    bad = httpx.get(proxy.base_url + "/chat/completions", params={"limit": 0})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "limit"


def test_retrieve_update_delete_messages(seeded):
    proxy, c, ids = seeded
    got = c.chat.completions.retrieve(ids[2])
    assert got.id == ids[2] and got.choices[0].message.content == "question 2" and got.metadata["i"] == "2"
    upd = c.chat.completions.update(ids[2], metadata={"reviewed": "yes"})
    assert upd.metadata == {"reviewed": "yes"}
    assert [x.id for x in c.chat.completions.list(metadata={"reviewed": "yes"})] == [ids[2]]
    with pytest.raises(openai.BadRequestError):
        c.chat.completions.update(ids[2], metadata={f"k{i}": "v" for i in range(17)})
    msgs = list(c.chat.completions.messages.list(ids[2], limit=1))
    assert [m.id for m in msgs] == [f"{ids[2]}-0", f"{ids[2]}-1"] and msgs[1].content == "question 2"
    assert [m.id for m in c.chat.completions.messages.list(ids[2], order="desc")] == [f"{ids[2]}-1", f"{ids[2]}-0"]
    deleted = c.chat.completions.delete(ids[2])
    assert deleted.deleted is True and deleted.id == ids[2] and deleted.object == "chat.completion.deleted"
    for call in (c.chat.completions.retrieve, c.chat.completions.delete, c.chat.completions.messages.list):
        with pytest.raises(openai.NotFoundError) as exc:
            call(ids[2])
        assert exc.value.code == "not_found"
    assert ids[2] not in [x.id for x in c.chat.completions.list()]
    # A cursor that names no completion (here: the one just deleted) is OpenAI's 404, never a silent
    # restart at the first page (auto-pagination would loop) nor an empty page.
    with pytest.raises(openai.NotFoundError) as exc:
        c.chat.completions.list(after=ids[2])
    assert exc.value.body["param"] == "after"
    with pytest.raises(openai.NotFoundError):
        c.chat.completions.messages.list(ids[3], after=f"{ids[3]}-9")


def test_azure_variants(seeded):
    proxy, _c, ids = seeded
    az = openai.AzureOpenAI(azure_endpoint=proxy.url, api_key=KEY, api_version="2025-02-01-preview", max_retries=0)
    assert [x.id for x in az.chat.completions.list(limit=3)] == ids
    assert az.chat.completions.retrieve(ids[0]).id == ids[0]
    assert len(list(az.chat.completions.messages.list(ids[0]))) == 2
    v1 = openai.OpenAI(base_url=proxy.url + "/openai/v1", api_key=KEY, max_retries=0)
    assert [x.id for x in v1.chat.completions.list(limit=4)] == ids
    assert v1.chat.completions.update(ids[1], metadata={"a": "b"}).metadata == {"a": "b"}
    assert az.chat.completions.delete(ids[1]).deleted is True
    with pytest.raises(openai.NotFoundError):
        v1.chat.completions.retrieve(ids[1])
