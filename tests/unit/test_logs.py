import logging

from sync.logs import get_logger


def test_fields_travel_in_the_message(caplog):
    log = get_logger("sync.test")
    with caplog.at_level(logging.INFO, logger="sync.test"):
        log.info("run finished", extra={"run": "r-1", "status": "succeeded", "note": "two words"})
    [record] = caplog.records
    assert record.getMessage() == 'run finished run=r-1 status=succeeded note="two words"'
    assert record.run == "r-1"  # still an attribute for handlers that read fields
