"""Decoding pages in worker processes: same result as in place, failures contained, no orphans."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator
from functools import partial
from pathlib import Path

import orjson
import pytest

from syncsvc.errors import Transient
from syncsvc.sync.pipeline import decode as page_decode
from syncsvc.sync.pipeline.decode import PageDecoder, auto_workers, decode_page
from tests.fixtures.fhir_resources import observation

BASE = "https://fhir.example.org/r4/tenant-a"
PATIENT = "p-1"
URL = f"{BASE}/Observation?patient={PATIENT}"
#: Long enough for a worker process to start, decode or exit on a loaded 2-core machine.
WAIT_SECONDS = 20.0


#: An offset other than UTC: the worker must place the instant in time as the event loop does.
_observation = partial(
    observation,
    patient=PATIENT,
    meta={"versionId": "1", "lastUpdated": "2026-11-01T10:00:00+01:00"},
)


def _bundle(*resources: dict[str, object], next_url: str | None = None) -> bytes:
    links = [{"relation": "self", "url": URL}]
    if next_url is not None:
        links.append({"relation": "next", "url": next_url})
    entries: list[dict[str, object]] = [
        {"resource": resource, "search": {"mode": "match"}} for resource in resources
    ]
    entries.append(
        {"resource": {"resourceType": "OperationOutcome"}, "search": {"mode": "outcome"}}
    )
    return orjson.dumps(
        {"resourceType": "Bundle", "type": "searchset", "link": links, "entry": entries}
    )


PAGE = _bundle(
    *(_observation(f"obs-{n}") for n in range(40)),
    _observation("obs-wrong", status="entered-in-error"),
    _observation("obs-other", patient="someone-else"),
    next_url=f"{BASE}/Observation?page=2",
)


@pytest.fixture
async def decoder() -> AsyncIterator[PageDecoder]:
    """A started decoder with one worker, used for every page however small."""
    started = PageDecoder(workers=1, inline_below=0)
    try:
        await started.start()
        yield started
    finally:
        await started.close()


async def test_a_worker_decodes_a_page_exactly_as_the_event_loop_would(
    decoder: PageDecoder,
) -> None:
    in_place = decode_page(URL, PAGE, "Observation", PATIENT, BASE)

    decoded = await decoder.decode(URL, PAGE, "Observation", PATIENT, BASE)

    assert decoded == in_place
    assert decoded.next_url == f"{BASE}/Observation?page=2"
    assert decoded.self_url == URL
    assert len(decoded.prepared.items) == 41
    assert decoded.prepared.rejected == ["Observation/obs-other"]
    assert [item.resource_id for item in decoded.prepared.items if item.entered_in_error] == [
        "obs-wrong"
    ]
    assert decoded.prepared.max_last_updated is not None
    assert decoded.prepared.max_last_updated.utcoffset() is not None


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b'{"resourceType": "Bundle", "entry": [', "malformed JSON"),
        (b'{"resourceType": "Patient", "id": "x"}', "something other than a Bundle"),
        (b'{"resourceType": "Bundle", "entry": {"resource": 1}}', "not a list"),
    ],
)
async def test_a_hostile_page_fails_in_a_worker_as_it_fails_in_place(
    decoder: PageDecoder, body: bytes, message: str
) -> None:
    with pytest.raises(Transient) as in_place:
        decode_page(URL, body, "Observation", PATIENT, BASE)
    with pytest.raises(Transient) as in_worker:
        await decoder.decode(URL, body, "Observation", PATIENT, BASE)

    assert message in in_worker.value.message
    assert in_worker.value.message == in_place.value.message
    assert in_worker.value.reason == in_place.value.reason
    # The worker survives a hostile page.
    assert (await decoder.decode(URL, PAGE, "Observation", PATIENT, BASE)).next_url


async def test_malformed_entry_and_link_fields_neither_crash_nor_page(
    decoder: PageDecoder,
) -> None:
    body = orjson.dumps(
        {
            "resourceType": "Bundle",
            "link": 5,
            "entry": [
                {"resource": _observation("obs-1"), "search": "match"},
                {"resource": _observation("obs-2"), "search": {"mode": "include"}},
                "not an entry",
            ],
        }
    )

    decoded = await decoder.decode(URL, body, "Observation", PATIENT, BASE)

    assert decoded == decode_page(URL, body, "Observation", PATIENT, BASE)
    assert [item.resource_id for item in decoded.prepared.items] == ["obs-1"]
    assert decoded.next_url is None


async def test_a_worker_that_died_idle_is_replaced_before_the_next_page() -> None:
    decoder = PageDecoder(workers=1, inline_below=1024)
    await decoder.start()
    try:
        (pid,) = decoder.worker_pids
        os.kill(pid, signal.SIGKILL)
        await _until_gone(pid)

        # A page below the threshold never needed the worker.
        small = _bundle(_observation("obs-small"))
        assert len(small) < 1024
        small_page = await decoder.decode(URL, small, "Observation", PATIENT, BASE)
        assert [item.resource_id for item in small_page.prepared.items] == ["obs-small"]
        # No page was in the dead worker: the next one goes to its replacement.
        decoded = await decoder.decode(URL, PAGE, "Observation", PATIENT, BASE)
        assert len(decoded.prepared.items) == 41
        assert decoder.worker_pages == 1
        first, replacement = decoder.worker_pids
        assert first == pid
        assert _alive(replacement)
    finally:
        await decoder.close()


async def test_a_hung_worker_fails_its_page_as_transient_and_is_replaced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(page_decode, "PAGE_SECONDS", 0.5)
    decoder = PageDecoder(workers=1, inline_below=0)
    await decoder.start()
    try:
        (pid,) = decoder.worker_pids
        os.kill(pid, signal.SIGSTOP)

        with pytest.raises(Transient, match="decoder process stopped unexpectedly"):
            await asyncio.wait_for(
                decoder.decode(URL, PAGE, "Observation", PATIENT, BASE), WAIT_SECONDS
            )

        await _until_gone(pid)  # killed, not left stopped
        decoded = await decoder.decode(URL, PAGE, "Observation", PATIENT, BASE)
        assert len(decoded.prepared.items) == 41
        assert len(decoder.worker_pids) == 2
    finally:
        await asyncio.wait_for(decoder.close(), WAIT_SECONDS)


async def test_a_cancelled_page_leaves_the_worker_answering_the_next_in_order(
    decoder: PageDecoder,
) -> None:
    big = _bundle(*(_observation(f"big-{n}", note=[{"text": "x" * 2000}]) for n in range(500)))
    cancelled = asyncio.ensure_future(decoder.decode(URL, big, "Observation", PATIENT, BASE))
    await asyncio.sleep(0)  # handed to the worker
    cancelled.cancel()
    with pytest.raises(asyncio.CancelledError):
        await cancelled

    decoded = await asyncio.wait_for(
        decoder.decode(URL, PAGE, "Observation", PATIENT, BASE), WAIT_SECONDS
    )

    # The big page's answer, still on its way, went to nobody: this is this page's own.
    assert len(decoded.prepared.items) == 41
    assert len(decoder.worker_pids) == 1  # the worker was not replaced


async def test_when_no_worker_can_be_started_pages_are_decoded_in_place(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    decoder = PageDecoder(workers=1, inline_below=0)
    await decoder.start()
    tries = 0

    async def refused() -> None:
        nonlocal tries
        tries += 1
        raise OSError("no more processes")

    try:
        (pid,) = decoder.worker_pids
        os.kill(pid, signal.SIGKILL)
        await _until_gone(pid)
        monkeypatch.setattr(page_decode, "_spawn", refused)

        pages = [
            await asyncio.wait_for(
                decoder.decode(URL, PAGE, "Observation", PATIENT, BASE), WAIT_SECONDS
            )
            for _ in range(3)
        ]

        assert [len(page.prepared.items) for page in pages] == [41, 41, 41]
        assert decoder.worker_pages == 0
        assert tries == 1  # not asked again at every page
    finally:
        await asyncio.wait_for(decoder.close(), WAIT_SECONDS)


async def test_workers_ignore_a_ctrl_c_meant_for_the_service(decoder: PageDecoder) -> None:
    (pid,) = decoder.worker_pids
    os.kill(pid, signal.SIGINT)

    decoded = await decoder.decode(URL, PAGE, "Observation", PATIENT, BASE)

    assert len(decoded.prepared.items) == 41
    assert _alive(pid)
    assert decoder.worker_pages == 1


async def test_a_worker_dying_beside_a_busy_one_leaves_no_process_behind() -> None:
    # The survivor is mid-page when the pool breaks; the pool must still be able to stop it.
    big = _bundle(*(_observation(f"obs-{n}", note=[{"text": "x" * 2000}]) for n in range(1000)))
    decoder = PageDecoder(workers=2, inline_below=0)
    try:
        await decoder.start()
        first, second = decoder.worker_pids
        pages = [
            asyncio.ensure_future(decoder.decode(URL, big, "Observation", PATIENT, BASE))
            for _ in range(16)
        ]
        # Killed once the first page is back (not after a fixed sleep, which an idle machine
        # outran): the other fifteen are then still queued or being decoded.
        await asyncio.wait(pages, timeout=WAIT_SECONDS, return_when=asyncio.FIRST_COMPLETED)
        os.kill(first, signal.SIGKILL)
        # The pool that shared one result pipe hung here forever once a worker died mid-answer.
        outcomes = await asyncio.wait_for(
            asyncio.gather(*pages, return_exceptions=True), WAIT_SECONDS
        )
    finally:
        await asyncio.wait_for(decoder.close(), WAIT_SECONDS)

    assert any(isinstance(outcome, Transient) for outcome in outcomes), outcomes
    assert all(
        isinstance(outcome, Transient) or len(outcome.prepared.items) == 1000
        for outcome in outcomes
    ), outcomes
    for pid in (first, second):
        await _until_gone(pid)


async def test_pages_handed_to_workers_are_decoded_when_the_decoder_closes() -> None:
    decoder = PageDecoder(workers=1, inline_below=0)
    await decoder.start()
    pages = [
        asyncio.ensure_future(decoder.decode(URL, PAGE, "Observation", PATIENT, BASE))
        for _ in range(8)
    ]
    await asyncio.sleep(0)  # every page is submitted before the close begins

    await asyncio.wait_for(decoder.close(), WAIT_SECONDS)

    decoded = await asyncio.gather(*pages)
    assert [len(page.prepared.items) for page in decoded] == [41] * 8
    # Pages after the close are decoded in place.
    after = await decoder.decode(URL, PAGE, "Observation", PATIENT, BASE)
    assert len(after.prepared.items) == 41
    assert decoder.worker_pages == 8


async def test_close_stops_the_workers() -> None:
    decoder = PageDecoder(workers=2)
    await decoder.start()
    pids = decoder.worker_pids
    assert len(pids) == 2

    await decoder.close()

    for pid in pids:
        await _until_gone(pid)


def test_a_worker_exits_when_its_service_is_killed_outright(tmp_path: Path) -> None:
    script = tmp_path / "service.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio

            from syncsvc.sync.pipeline.decode import PageDecoder


            async def main() -> None:
                decoder = PageDecoder(workers=1)
                await decoder.start()
                print(decoder.worker_pids[0], flush=True)
                await asyncio.sleep(60)


            if __name__ == "__main__":
                asyncio.run(main())
            """
        ),
        encoding="utf-8",
    )
    with subprocess.Popen(  # noqa: S603 - this interpreter, a script the test wrote
        [sys.executable, str(script)],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[3],
    ) as service:
        try:
            assert service.stdout is not None
            worker = int(service.stdout.readline())
            service.kill()
            service.wait(WAIT_SECONDS)
            deadline = time.monotonic() + WAIT_SECONDS
            while _alive(worker) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not _alive(worker), "the decode worker outlived its service"
        finally:
            service.kill()


@pytest.mark.parametrize(("cores", "workers"), [(None, 0), (1, 0), (2, 1), (4, 3), (64, 4)])
def test_automatic_workers_leave_one_core_to_the_event_loop(
    cores: int | None, workers: int
) -> None:
    assert auto_workers(cores) == workers


def _alive(pid: int) -> bool:
    try:
        # A dead child not yet reaped by its parent is a zombie: gone for this purpose.
        with Path(f"/proc/{pid}/stat").open(encoding="ascii") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # reaped before, or while, it was read
        return False


async def _until_gone(pid: int) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    while _alive(pid):
        assert time.monotonic() < deadline, f"process {pid} is still running"
        await asyncio.sleep(0.05)
