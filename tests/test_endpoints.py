"""What every endpoint shares: how a fault of ours looks to its caller and to whoever runs the app."""

import logging

from tests.conftest import Api, blob_names
from visionary.offline import OfflineImages


async def test_a_fault_of_ours_is_a_500_without_detail_and_is_logged_with_its_traceback(
    api: Api, offline_env, container, monkeypatch, caplog
):
    caplog.set_level(logging.INFO)

    async def broken(self: OfflineImages, prompt: str, size: str) -> None:
        raise KeyError("palette index 7")  # a bug of ours, not a failure of a service

    monkeypatch.setattr(OfflineImages, "generate", broken)
    answer = await api.generate({"prompt": "A lighthouse at dusk"})
    assert answer.status == 500
    assert answer.json() == {"error": "Something went wrong on our side; it has been logged.", "code": "internal_error"}
    # The operator gets the traceback, at ERROR; the caller not a word of it.
    [fault] = [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert fault.exc_info is not None and fault.exc_info[0] is KeyError
    assert b"palette" not in answer.body
    assert any(
        line.startswith("generateImage status=500 ") and " code=internal_error" in line
        for line in (record.getMessage() for record in caplog.records)
    )
    assert await blob_names(container) == []


async def test_no_answer_may_be_kept_by_a_cache_in_front_of_the_app(api: Api, offline_env, container):
    # A CDN or proxy that kept a page would hand out SAS links after they expire, and the
    # same suggestion to everyone; Front Door keeps an answer without Cache-Control for days.
    created = await api.generate({"prompt": "A lighthouse at dusk"})
    answers = [
        created,
        await api.get_images("limit=1"),
        await api.suggest(),
        await api.call("sasToken"),
        await api.get_images("limit=0"),  # an error answer too
    ]
    assert [answer.status for answer in answers] == [201, 200, 200, 200, 400]
    assert all(answer.headers["Cache-Control"] == "no-store" for answer in answers)
