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
