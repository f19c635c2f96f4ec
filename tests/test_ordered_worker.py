"""The background job queue behind asynchronous cache fills (edge_moe/ordered_worker.py)."""

from __future__ import annotations

import threading
import time

import pytest

from edge_moe.ordered_worker import OrderedWorker, WorkerError


def test_jobs_run_in_order_and_wait_blocks_until_its_job_ran() -> None:
    w = OrderedWorker("test")
    gate = threading.Event()
    ran: list[int] = []
    w.submit(gate.wait)  # holds the queue until released
    tickets = [w.submit(lambda i=i: ran.append(i)) for i in range(50)]
    assert tickets == list(range(2, 52)) and ran == [] and w.pending == 51
    assert not w.done(tickets[0])
    gate.set()
    w.wait(tickets[9])
    assert ran[:10] == list(range(10))  # job 10 and every earlier one ran
    w.drain()
    assert ran == list(range(50)) and w.pending == 0 and w.done(tickets[-1])
    w.close()


def test_wait_on_a_finished_or_zero_ticket_returns_at_once() -> None:
    w = OrderedWorker("test")
    w.wait(0)  # nothing submitted: a slot never filled has ticket 0
    t = w.submit(lambda: None)
    w.wait(t)
    w.wait(t)
    w.close()


def test_a_failed_job_skips_the_rest_and_every_call_raises_it() -> None:
    w = OrderedWorker("fills")
    ran: list[int] = []
    w.submit(lambda: ran.append(1))
    bad = w.submit(lambda: (_ for _ in ()).throw(OSError("disk gone")))
    later = w.submit(lambda: ran.append(3))
    with pytest.raises(WorkerError, match="fills: a background job failed: OSError"):
        w.wait(later)
    assert ran == [1] and not w.done(bad)
    with pytest.raises(WorkerError):
        w.submit(lambda: None)
    with pytest.raises(WorkerError):
        w.drain()
    w.close()  # does not raise


def test_close_runs_queued_jobs_then_stops_the_thread() -> None:
    w = OrderedWorker("test")
    ran: list[int] = []
    for i in range(5):
        w.submit(lambda i=i: (time.sleep(0.01), ran.append(i)))
    thread = w._thread
    w.close()
    assert ran == list(range(5)) and thread is not None and not thread.is_alive()
    with pytest.raises(RuntimeError, match="closed"):
        w.submit(lambda: None)
    w.close()  # idempotent


def test_no_thread_until_the_first_job() -> None:
    w = OrderedWorker("test")
    assert w._thread is None
    w.close()
    assert w._thread is None
