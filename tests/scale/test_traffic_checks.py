"""The scale test's checks on small hand-made runs: what they must and must not report."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from traffic import Call, Ledger, Observation, Write, consistency_violations, storage_violations  # noqa: E402


def call(client: int, sent: float, ended: float, status: int | None = 200, method: str = "GET") -> Call:
    return Call(client, "x", method, "/p", sent, ended, status)


def write(
    ledger: Ledger, client: int, sent: float, ended: float, fid: int, version: int, status: int | None = 200
) -> Write:
    w = Write(
        call(client, sent, ended, status, "PATCH"),
        "update",
        f"m{client}-{fid}-{version}-{sent}",
        version,
        fid,
    )
    ledger.add(w)
    return w


def create(ledger: Ledger, fid: int) -> str:
    w = Write(call(0, 0.1, 0.2, 201, "POST"), "create", f"c{fid}", 1, fid)
    ledger.add(w)
    return w.marker


def read(ledger: Ledger, client: int, sent: float, seen: dict[int, int], complete: bool = True) -> None:
    ledger.add(Observation(call(client, sent, sent + 0.01), seen, complete))


def ledger() -> Ledger:
    return Ledger(start=0.0)


def test_a_read_after_the_clients_own_write_must_show_it():
    run = ledger()
    write(run, 1, 1.0, 1.1, fid=7, version=2)
    read(run, 1, 1.2, {7: 1})
    read(run, 1, 1.3, {})
    problems = consistency_violations(run)
    assert len(problems) == 2
    assert "feature 7 at version 1, but version 2" in problems[0]
    assert "feature 7 missing" in problems[1]


def test_a_client_that_has_not_written_may_read_an_older_state():
    run = ledger()
    write(run, 1, 1.0, 1.1, fid=7, version=2)
    read(run, 2, 5.0, {7: 1})
    assert consistency_violations(run) == []


def test_writes_answered_before_the_clients_write_was_sent_must_be_seen_too():
    run = ledger()
    write(run, 1, 1.0, 1.1, fid=7, version=2)  # before client 2's write was sent: happened before it
    write(run, 1, 2.0, 2.6, fid=7, version=3)  # answered after client 2's write was sent: concurrent
    write(run, 2, 2.5, 2.7, fid=8, version=2)
    read(run, 2, 3.0, {7: 2, 8: 2})
    assert consistency_violations(run) == []
    read(run, 2, 3.1, {7: 1, 8: 2})
    assert len(consistency_violations(run)) == 1


def test_a_read_of_one_feature_is_held_to_that_feature_only():
    run = ledger()
    write(run, 1, 1.0, 1.1, fid=7, version=2)
    write(run, 1, 1.2, 1.3, fid=8, version=2)
    run.add(Observation(call(1, 2.0, 2.1), {7: 2}, complete=False, only=7))
    assert consistency_violations(run) == []


def test_writes_without_answer_bind_nobody():
    run = ledger()
    write(run, 1, 1.0, 1.1, fid=7, version=2)
    write(run, 1, 1.2, 1.5, fid=7, version=3, status=None)
    read(run, 1, 2.0, {7: 2})
    assert consistency_violations(run) == []


def test_storage_exactly_once_for_answered_writes_at_most_once_for_the_others():
    run = ledger()
    ok = write(run, 1, 1.0, 1.1, fid=7, version=2)
    lost = write(run, 1, 1.2, 1.5, fid=7, version=3, status=None)
    refused = write(run, 1, 1.6, 1.7, fid=7, version=3, status=412)
    base = [(7, create(run, 7), 1), (7, ok.marker, 2)]
    assert storage_violations(run, base) == []
    assert storage_violations(run, [*base, (7, lost.marker, 3)]) == []
    twice = storage_violations(run, [*base, (7, ok.marker, 3)])
    assert any("stored 2 times" in p for p in twice)
    assert any("stored 1 times" in p for p in storage_violations(run, [*base, (7, refused.marker, 3)]))
    assert any("stored 0 times" in p for p in storage_violations(run, base[:1]))
    assert any("never sent" in p for p in storage_violations(run, [*base, (9, "stranger", 1)]))


def test_versions_must_follow_one_another():
    run = ledger()
    first = write(run, 1, 1.0, 1.1, fid=7, version=2)
    second = write(run, 2, 1.0, 1.1, fid=7, version=2)  # two edits from the same version: one is lost
    created = create(run, 7)
    problems = storage_violations(run, [(7, created, 1), (7, first.marker, 2), (7, second.marker, 2)])
    assert any("versions stored in the order [1, 2, 2]" in p for p in problems)
    assert storage_violations(run, [(7, created, 1), (7, first.marker, 2)]) != []  # second is lost
