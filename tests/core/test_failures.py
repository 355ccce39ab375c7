"""How a failed start is worded: the exit code or signal, the health check, the output's end."""

from __future__ import annotations

from aether.core.failures import (
    CUT_MARK,
    describe_exit,
    health_failure,
    is_start_failure,
    start_failure,
    tail_output,
)


def test_tail_keeps_the_last_line_and_marks_the_cut_front() -> None:
    lines = [f'  File "app.py", line {i}, in frame_{i}' for i in range(200)]
    data = ("\n".join([*lines, "Error: boom at startup"]) + "\n\n").encode()
    tail = tail_output(data, max_lines=20, max_bytes=2048)
    shown = tail.split("\n")
    assert shown[0] == CUT_MARK
    assert shown[-1] == "Error: boom at startup"
    assert len(shown) == 21  # the mark and the last 20 lines
    assert len(tail.encode()) <= 2048 + len(CUT_MARK.encode()) + 1


def test_tail_bounded_by_bytes_keeps_whole_lines_from_the_end() -> None:
    data = "\n".join(["x" * 300] * 10 + ["the end"]).encode()
    shown = tail_output(data, max_lines=20, max_bytes=1000).split("\n")
    assert shown[0] == CUT_MARK and shown[-1] == "the end"
    assert shown[1:-1] == ["x" * 300] * 3


def test_short_output_is_whole_and_unmarked() -> None:
    assert tail_output(b"starting\nError: boom at startup\n") == "starting\nError: boom at startup"
    assert tail_output(b"") == "(none)"
    assert tail_output(b"\n \n") == "(none)"


def test_one_huge_last_line_keeps_its_end() -> None:
    data = ("a" * 5000 + "END").encode()
    tail = tail_output(data, max_bytes=100)
    assert tail.startswith(CUT_MARK) and tail.endswith("END")
    assert len(tail) <= 100 + len(CUT_MARK) + 1


def test_exit_codes_and_signals() -> None:
    assert describe_exit(1) == "exited with code 1"
    assert describe_exit(-9) == "killed by signal 9 (SIGKILL)"
    # bubblewrap's init reports death by signal N as 128+N
    assert describe_exit(137, shell_convention=True) == "killed by signal 9 (SIGKILL)"
    assert describe_exit(143, shell_convention=True) == "killed by signal 15 (SIGTERM)"
    assert describe_exit(137) == "exited with code 137"
    assert describe_exit(1, shell_convention=True) == "exited with code 1"
    assert describe_exit(255, shell_convention=True) == "exited with code 255"


def test_start_failures_are_recognised_by_their_wording() -> None:
    exited = start_failure(1, "Error: boom at startup")
    assert exited == (
        "exited with code 1 before it was healthy; last output:\nError: boom at startup"
    )
    silent = health_failure("/healthz", 8000, 5, None, "(none)")
    assert silent.startswith("health check GET /healthz: no answer within 5 s; last output:")
    sick = health_failure("/healthz", 8000, 5, 503, "(none)")
    assert sick.startswith("health check GET /healthz: answered 503")
    tcp = health_failure(None, 8000, 2.5, None, "(none)")
    assert tcp.startswith("health check TCP port 8000: no connection within 2.5 s")
    for message in (exited, silent, sick, tcp, start_failure(-9, "x")):
        assert is_start_failure(message)
    for message in (
        "load failed: artifact digest mismatch",
        "crash loop: exited 6 times in 60s (last: exited with code 1); last output:\nx",
        "checkpoint failed: timeout",
        # output that merely mentions the words is not the cause
        "load failed: x; last output:\nhealth check before it was healthy",
    ):
        assert not is_start_failure(message)
