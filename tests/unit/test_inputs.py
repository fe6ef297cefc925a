"""Untrusted input parsed strictly (issue 22 #5): page sizes are ASCII decimals within bounds, JSON is UTF-8 text."""
import json

import pytest

from sync import changes
from sync.errors import InvalidInput
from sync.inputs import loads_json, page_size


@pytest.mark.parametrize("text", ["²", "①", "٣", "１", "9" * 5000, "0", "-1", "+1", " 5", "5 ", "1e3", "501", "0x10",
                                  "1_0", "", "00000000000000000000000000000000000000000000501"])
def test_page_sizes_that_are_not_ascii_decimals_in_range_are_400(text):
    if text == "":
        assert page_size(text, default=50, maximum=500) == 50
        return
    with pytest.raises(InvalidInput) as raised:
        page_size(text, default=50, maximum=500)
    assert raised.value.code == "invalid_page_size"


@pytest.mark.parametrize("text, size", [("1", 1), ("500", 500), ("007", 7), (None, 50), ("0" * 3000 + "12", 12)])
def test_page_sizes_in_range(text, size):
    assert page_size(text, default=50, maximum=500) == size


@pytest.mark.parametrize("raw", [b'{"value": [{"subscriptionId": "\\ud800", "clientState": "x"}]}',
                                 b'{"a": "\\udfff"}', b"[" * 1000 + b"]" * 1000, b'{"a":' * 1000 + b"1" + b"}" * 1000])
def test_json_with_a_lone_surrogate_or_nested_1000_deep_is_refused(raw):
    with pytest.raises(ValueError):
        loads_json(raw)


def test_json_with_paired_surrogates_is_text():
    assert loads_json(b'{"a": "\\ud83d\\ude42"}') == {"a": "🙂"}


async def test_the_webhook_refuses_a_lone_surrogate_and_deep_nesting_with_400(svc):
    for body in (json.dumps({"value": [{"subscriptionId": "\ud800", "clientState": "x"}]}).encode(),
                 b'{"value": [' + b"[" * 1000 + b"]" * 1000 + b"]}"):
        with pytest.raises(InvalidInput) as raised:
            await changes.receive(svc, body)
        assert raised.value.code == "invalid_notification"


class CountingWatches:
    def __init__(self, inner):
        self.inner, self.reads = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    async def get(self, watch_id):
        self.reads += 1
        return await self.inner.get(watch_id)


async def test_a_notification_body_bounds_the_watches_it_reads(svc):
    svc.watches = CountingWatches(svc.watches)
    many = {"value": [{"subscriptionId": f"w-{i}", "clientState": "x"} for i in range(1000)]}
    with pytest.raises(InvalidInput):
        await changes.receive(svc, json.dumps(many).encode())
    assert svc.watches.reads == 0
    allowed = {"value": [{"subscriptionId": f"w-{i % changes.MAX_WATCH_IDS}", "clientState": "x"} for i in range(1000)]}
    assert await changes.receive(svc, json.dumps(allowed).encode()) == {"accepted": 0, "ignored": 1000, "queued": 0}
    assert svc.watches.reads == changes.MAX_WATCH_IDS
    odd = {"value": [{"subscriptionId": ["x"], "clientState": "x"}, {"subscriptionId": {"a": 1}}, {"x": 1}, 7]}
    assert await changes.receive(svc, json.dumps(odd).encode()) == {"accepted": 0, "ignored": 4, "queued": 0}


async def test_users_grid_and_change_list_refuse_unicode_digits_and_huge_numbers(svc):
    from tests.helpers import call
    from tests.unit.syncdsl import SALES, connect, four_groups, full_sync

    four_groups(svc)
    sub = await connect(svc, groups=(SALES,))
    run = await full_sync(svc, sub)
    route = {"subscriptionId": sub.id, "runId": run.run.id}
    for size in ("²", "①", "9" * 5000):  # were 500s: isdigit() passed them, int() refused them
        status, body, _ = await call("list_users", params={"pageSize": size})
        assert (status, body["code"]) == (400, "invalid_page_size")
        status, body, _ = await call("list_run_changes", params={"pageSize": size}, route=route)
        assert (status, body["code"]) == (400, "invalid_page_size")
    assert (await call("list_run_changes", params={"pageSize": "2"}, route=route))[0] == 200
