import logging

from sync.logs import get_logger


def test_fields_travel_in_the_message(caplog):
    log = get_logger("sync.test")
    with caplog.at_level(logging.INFO, logger="sync.test"):
        log.info("run finished", extra={"run": "r-1", "status": "succeeded", "note": "two words"})
    [record] = caplog.records
    assert record.getMessage() == 'run finished run=r-1 status=succeeded note="two words"'
    assert record.run == "r-1"  # still an attribute for handlers that read fields


async def test_every_request_is_logged_once_with_its_outcome_and_never_its_token(svc, caplog):
    import logging

    from tests.helpers import call, token

    caplog.set_level(logging.INFO, logger="sync.functions.http")
    good = token()
    await call("list_users", auth=f"Bearer {good}", params={"code": "function-key-value"})
    await call("list_users", auth="Bearer not-a-token")
    await call("get_user", route={"userId": "nobody"})
    lines = [r for r in caplog.records if r.getMessage().startswith("http request")]
    assert [(r.levelname, "status=200" in r.getMessage()) for r in lines] == [
        ("INFO", True), ("WARNING", False), ("WARNING", False)]
    assert "org=org-a" in lines[0].getMessage() and "path=/api/users" in lines[0].getMessage()
    assert "code=invalid_token" in lines[1].getMessage() and "code=user_not_found" in lines[2].getMessage()
    text = caplog.text
    assert good not in text and "not-a-token" not in text and "function-key-value" not in text


def test_structured_values_are_written_as_json():
    import logging

    from sync.logs import get_logger

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    logger = logging.getLogger("test.json.fields")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    get_logger("test.json.fields").info("run finished", extra={"counts": {"created": 2, "skipped": 0}, "ids": ["a"]})
    assert records == ['run finished counts={"created":2,"skipped":0} ids=["a"]']


def test_fields_named_like_logrecord_attributes_are_logged_not_refused(caplog):
    from sync.logs import RESERVED

    log = get_logger("sync.test.reserved")
    fields = {name: 1 for name in sorted(RESERVED)}
    with caplog.at_level(logging.INFO, logger="sync.test.reserved"):
        log.info("summary", extra=fields)  # makeRecord raised KeyError on "created" (and every other one)
    [record] = caplog.records
    assert "created=1" in record.getMessage() and record.field_created == 1
    assert isinstance(record.created, float) and record.name == "sync.test.reserved"


async def test_the_timers_log_every_summary_they_emit(svc, caplog, monkeypatch):
    """Both timers fired as the host does: the renewal's summary always has ``created``, the nightly's may."""
    from azure.functions.timer import TimerRequest

    from sync import runs, watching
    from tests.helpers import functions_by_name

    async def renewal_summary(_svc):
        return {"renewed": 1, "created": 2, "dropped": 0}

    async def nightly_summary(_svc):
        return {"started": 1, "skipped": 0, "failed": 0, "created": 3, "users_pruned": 0, "msg": "x", "name": "y"}

    monkeypatch.setattr(watching, "renew_watches", renewal_summary)
    monkeypatch.setattr(runs, "nightly", nightly_summary)
    with caplog.at_level(logging.INFO):
        await functions_by_name()["watch_renewal"].get_user_function()(TimerRequest(past_due=False))
        await functions_by_name()["nightly_sync"].get_user_function()(TimerRequest(past_due=True))
    lines = [r.getMessage() for r in caplog.records]
    assert "graph subscriptions renewed past_due=False renewed=1 created=2 dropped=0" in lines
    assert any(line.startswith("nightly sync fired past_due=True") and "created=3" in line for line in lines)
    # and the real summaries, on fakes: a renewal with nothing to do and a nightly with retention
    caplog.clear()
    monkeypatch.undo()
    with caplog.at_level(logging.INFO):
        await functions_by_name()["watch_renewal"].get_user_function()(TimerRequest(past_due=False))
        await functions_by_name()["nightly_sync"].get_user_function()(TimerRequest(past_due=False))
    assert any("created=0" in r.getMessage() for r in caplog.records)
