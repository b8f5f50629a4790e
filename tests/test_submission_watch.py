"""What the transport tells a task's submission watch: when a POST is on its way.

The blocking client's Ctrl-C and the CLI's first signal wait for a POST on its way and cut
one that is not; these pin the transport's side of that at the wire level.
"""

from __future__ import annotations

import httpcore
import pytest
from _http_fakes import ScriptedAPI, generation_json, make_transport, ok, song

from aimlmusic._transport import SUBMISSION_WATCH, _PostWatch, _SendingNotice

pytestmark = pytest.mark.anyio


class _Recorder:
    """A submission watch that remembers what it was told."""

    def __init__(self) -> None:
        self.told: list[bool] = []
        self.ids: list[str] = []

    def on_its_way(self, leaving: bool) -> None:
        self.told.append(leaving)

    def submitted(self, generation_id: str) -> None:
        self.ids.append(generation_id)


async def test_a_proxy_tunnels_connect_is_not_the_post_on_its_way() -> None:
    """Sending a proxy's CONNECT (traced with the request's own callback) is still
    connecting: the POST is not on its way, and no hook is told it is leaving."""
    recorder = _Recorder()
    told_sending: list[bool] = []
    watch = _PostWatch(recorder)
    notice = _SendingNotice(lambda: told_sending.append(True), None, watch)
    watch.set(True)  # as _attempt does before sending, not knowing whether it is traced
    connect = httpcore.Request(b"CONNECT", "http://proxy.example:3128/")
    await notice.trace("connection.connect_tcp.started", {})
    await notice.trace("http11.send_request_headers.started", {"request": connect})
    assert recorder.told == [True, False]
    assert not notice.fired
    assert told_sending == []
    post = httpcore.Request(b"POST", "https://api.example/v2/generate/audio")
    await notice.trace("http11.send_request_headers.started", {"request": post})
    assert recorder.told == [True, False, True]
    assert told_sending == [True]


async def test_the_requests_before_a_post_are_made_before_it_is_on_its_way() -> None:
    """What runs before each request (the emulator's time-scale probe) runs before the
    POST's watch turns on: a Ctrl-C while it asks cuts at once."""
    recorder = _Recorder()
    seen: list[list[bool]] = []

    async def probe() -> None:
        seen.append(list(recorder.told))

    api = ScriptedAPI(ok(generation_json()))
    transport = make_transport(api)
    transport._before_requests = probe
    token = SUBMISSION_WATCH.set(recorder)
    try:
        await transport.submit(song())
    finally:
        SUBMISSION_WATCH.reset(token)
    assert seen == [[]]
    assert recorder.told == [True, False]
