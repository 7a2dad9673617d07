"""Progress output: a bar on a terminal, a few plain lines with rate and ETA in a log file."""

import io
import re
import subprocess
import sys

from mimir.cli import progress as progress_module
from mimir.cli.progress import (
    LogLines,
    Progress,
    Stages,
    format_duration,
    format_line,
    format_rate,
    is_terminal,
    start_progress,
)

ESCAPE = re.compile(r"\x1b\[")


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Closed(io.StringIO):
    def isatty(self) -> bool:
        raise ValueError("I/O operation on closed file")


def test_only_a_terminal_gets_a_bar():
    assert is_terminal(Terminal())
    assert not is_terminal(io.StringIO())
    assert not is_terminal(Closed())
    assert not is_terminal(object())


def test_durations_and_rates_read_plainly():
    assert format_duration(0.4) == "0 s"
    assert format_duration(42.4) == "42 s"
    assert format_duration(185) == "3 min 05 s"
    assert format_duration(7500) == "2 h 05 min"
    assert format_rate(2.104, "exam") == "2.10 exam/s"
    assert format_rate(12.34, "it") == "12.3 it/s"
    assert format_rate(1234.0, "it") == "1234 it/s"
    assert format_rate(0.25, "exam") == "4.00 s/exam"
    assert format_rate(None, "exam") == "? exam/s"
    assert format_rate(0.0, "exam") == "? exam/s"


def test_a_line_says_done_total_rate_and_eta():
    line = format_line("compress", 120, 300, "exam", 57.0, 2.0, {"loss": "0.123"})
    assert line == "compress 120/300 (40 %), 2.00 exam/s, 57 s elapsed, ETA 1 min 30 s, loss 0.123"
    assert format_line("compress", 300, 300, "exam", 150.0, 2.0) == "compress 300/300 (100 %), 2.00 exam/s, done in 2 min 30 s"
    assert format_line("synth", 1, 3, "subject", 5.0, None).endswith("ETA ?")


def _log(total: int, clock: FakeClock) -> tuple[LogLines, io.StringIO]:
    stream = io.StringIO()
    return LogLines("train", total, "it", stream, clock=clock), stream


def test_lines_wait_for_both_the_interval_and_a_tenth_of_the_total():
    clock = FakeClock()
    log, stream = _log(1000, clock)
    for done in range(1, 100):  # 1 s per item: 30 s pass long before a tenth is done
        clock.now += 1
        log.show(done)
    assert stream.getvalue() == ""
    clock.now += 1
    log.show(100)
    assert stream.getvalue().splitlines() == ["train 100/1000 (10 %), 1.00 it/s, 1 min 40 s elapsed, ETA 15 min 00 s"]
    for done in range(101, 1000):  # a fast stretch: a tenth is done long before 30 s pass
        clock.now += 0.01
        log.show(done)
    assert len(stream.getvalue().splitlines()) == 1
    clock.now += 0.01
    log.show(1000)
    lines = stream.getvalue().splitlines()
    assert lines[-1].startswith("train 1000/1000 (100 %), ") and "done in 1 min 49 s" in lines[-1]


def test_a_long_stage_writes_about_ten_lines():
    clock = FakeClock()
    log, stream = _log(10_000, clock)
    for done in range(1, 10_001):
        clock.now += 0.5
        log.show(done)
    lines = stream.getvalue().splitlines()
    assert len(lines) == 10
    assert [line.split(" ")[1] for line in lines] == [f"{k * 1000}/10000" for k in range(1, 11)]
    assert "ETA 1 h 15 min" in lines[0] and "2.00 it/s" in lines[0]


def test_the_rate_of_a_resumed_stage_counts_from_its_first_report():
    clock = FakeClock()
    log, stream = _log(10_000, clock)
    clock.now += 10  # startup: loading the checkpoint of iteration 5000
    log.show(5001)
    for done in range(5002, 6002):
        clock.now += 0.5
        log.show(done)
    assert "2.00 it/s" in stream.getvalue().splitlines()[0]


def test_close_reports_a_stage_that_stopped_short_once():
    clock = FakeClock()
    log, stream = _log(50, clock)
    log.close()
    assert stream.getvalue() == ""  # never started: nothing to say
    clock.now += 3
    log.show(7, {"loss": "0.5"})
    log.close()
    log.close()
    assert stream.getvalue().splitlines() == ["train 7/50 (14 %), ? it/s, 3 s elapsed, ETA ?, loss 0.5"]


def test_quiet_shows_nothing_and_a_terminal_keeps_its_bar():
    quiet_stream = Terminal()
    with start_progress("compress", 3, "exam", quiet=True, stream=quiet_stream) as quiet:
        quiet.advance()
    assert type(quiet) is Progress and quiet_stream.getvalue() == ""
    terminal = Terminal()
    with start_progress("compress", 3, "exam", quiet=False, stream=terminal) as bar:
        for _ in range(3):
            bar.advance()
    assert "\r" in terminal.getvalue() and "3/3" in terminal.getvalue()


def test_stages_in_a_log_each_end_with_their_own_line():
    stream = io.StringIO()
    with Stages("exam", quiet=False, overlap=True, stream=stream) as stages:
        stages("compress", 1, 2)
        stages("predict", 1, 2)
        stages("compress", 2, 2)
        stages("predict", 2, 2)
    lines = stream.getvalue().splitlines()
    assert [line.split(",")[0] for line in lines] == ["compress 2/2 (100 %)", "predict 2/2 (100 %)"]


def test_each_stage_counts_in_its_own_unit():
    stream = io.StringIO()
    with Stages("step", quiet=False, stream=stream, units={"synth": "subject", "crossval": "it"}) as stages:
        stages("synth train", 2, 2)
        stages("crossval fold 0", 3, 3)
        stages("other", 1, 1)
    rates = [line.split(", ")[1].split()[-1] for line in stream.getvalue().splitlines()]  # "unit/s" or "s/unit"
    assert [re.sub(r"^s/|/s$", "", rate) for rate in rates] == ["subject", "it", "step"]


def test_sequential_stages_on_a_terminal_draw_one_bar_at_a_time(monkeypatch):
    closed = []
    monkeypatch.setattr(progress_module._Bar, "close", lambda self: closed.append(self._bar.desc))
    with Stages("step", quiet=False, leave=False, stream=Terminal()) as stages:
        stages("synth train", 1, 1)
        assert closed == []
        stages("compress", 1, 1)
        assert closed == ["synth train"]


def test_a_command_writing_to_a_log_file_writes_few_plain_lines(tiny_cohort, tmp_path):
    zips = sorted(tiny_cohort.glob("*.zip"))[:3]
    log = tmp_path / "job.log"
    command = [sys.executable, "-m", "mimir", "compress", *map(str, zips), "--cache", str(tmp_path / "cache"), "--workers", "1"]
    with log.open("w") as stderr:
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=stderr)
    text = log.read_text()
    assert "\r" not in text and not ESCAPE.search(text)
    lines = [line for line in text.splitlines() if line.startswith("compress ")]
    assert 1 <= len(lines) <= 11
    assert lines[-1].startswith("compress 3/3 (100 %), ") and "done in" in lines[-1]
    assert re.search(r", (\d+(\.\d+)? exam/s|\d+\.\d+ s/exam), ", lines[-1])  # the form depends on the speed


def test_quiet_writes_no_progress_to_the_log(tiny_cohort, tmp_path):
    zips = sorted(tiny_cohort.glob("*.zip"))[:2]
    command = [sys.executable, "-m", "mimir", "-q", "compress", *map(str, zips), "--cache", str(tmp_path / "cache"), "--workers", "1"]
    result = subprocess.run(command, check=True, capture_output=True, text=True)
    assert result.stderr == ""


def test_a_command_on_a_terminal_still_draws_its_bar(tiny_cohort, tmp_path):
    import fcntl
    import os
    import pty
    import struct
    import termios

    zips = sorted(tiny_cohort.glob("*.zip"))[:2]
    command = [sys.executable, "-m", "mimir", "compress", *map(str, zips), "--cache", str(tmp_path / "cache"), "--workers", "1"]
    controller, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))  # tqdm draws nothing 0 columns wide
    try:
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=terminal)
        os.close(terminal)
        received = b""
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # Linux: the terminal is gone once the command exits
                break
            if not chunk:
                break
            received += chunk
        assert process.wait() == 0
    finally:
        os.close(controller)
    text = received.decode()
    assert "\r" in text and "2/2" in text and "exam/s]" in text  # tqdm's own bar, not the log lines
    assert "(100 %)" not in text
