"""Progress lines: rate and ETA from the work done since the start, nothing for short phases,
plain lines (no bar) when the stream is not a terminal."""

from __future__ import annotations

import io

from ddkit import progress as P


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_plain_lines_with_rate_and_eta_only_after_the_delay(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "perf_counter", clock)
    out = io.StringIO()  # not a terminal: no bar
    p = P.Progress(100, "sampling", stream=out, delay=5.0, every=10.0)
    clock.now += 2.0
    p.update(10)  # 2 s in: under the delay, nothing
    assert out.getvalue() == ""
    clock.now += 10.0
    p.update(20)  # past the delay, the first line: 12 s for 30 steps, 2.5/s, 70 left -> 28 s
    assert out.getvalue().strip() == "sampling: 30/100 steps (30%), 0:12 elapsed, ETA 0:28"
    clock.now += 1.0
    p.update(5)  # within 10 s of the last line: nothing new
    assert len(out.getvalue().splitlines()) == 1
    clock.now += 10.0
    p.update(65, loss="0.1")
    p.close()
    lines = out.getvalue().splitlines()
    assert lines[1].startswith("sampling: 100/100 steps (100%), 0:23 elapsed, ETA 0:00, loss 0.1")
    assert lines[-1].startswith("sampling: 100/100 steps (100%)")


def test_a_resumed_phase_counts_its_rate_from_where_it_resumed(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "perf_counter", clock)
    out = io.StringIO()
    p = P.Progress(1000, "train", initial=900, stream=out, delay=0.0, every=0.0)
    clock.now += 10.0
    p.update(50)  # 50 steps in 10 s: 5 steps/s, 50 left -> 10 s
    assert out.getvalue().strip() == "train: 950/1000 steps (95%), 0:10 elapsed, ETA 0:10"


def test_a_short_phase_prints_nothing():
    out = io.StringIO()
    with P.Progress(3, "quick", stream=out) as p:
        p.update(3)
    assert out.getvalue() == ""


def test_the_first_plain_line_comes_at_the_delay(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(P.time, "perf_counter", clock)
    out = io.StringIO()
    p = P.Progress(10, "grid", stream=out, delay=5.0, every=10.0)
    clock.now += 6.0
    p.update(3)  # 6 s: past the delay, though under the 10 s interval
    assert out.getvalue().startswith("grid: 3/10 steps (30%), 0:06 elapsed")
