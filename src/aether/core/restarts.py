"""When a supervised process that exited is started again: capped exponential backoff.

Pure: :func:`after_exit` takes the policy, the streak of quick exits so far and
how long the process ran, and returns the delay before the restart and the new
streak. A process that ran for ``healthy_after`` seconds or more starts a new
streak (its next restart waits ``initial`` again).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Backoff", "after_exit", "describe_exit"]


@dataclass(frozen=True)
class Backoff:
    initial: float = 1.0  # seconds before the first restart of a streak
    factor: float = 2.0
    cap: float = 30.0  # never waits longer than this
    healthy_after: float = 30.0  # a run this long resets the streak

    def __post_init__(self) -> None:
        if not (0 < self.initial <= self.cap and self.factor >= 1 and self.healthy_after > 0):
            raise ValueError("backoff needs 0 < initial <= cap, factor >= 1, healthy_after > 0")


def after_exit(policy: Backoff, streak: int, ran_for: float) -> tuple[float, int]:
    """``(delay, new streak)`` for a process that exited after running ``ran_for`` seconds."""
    if ran_for >= policy.healthy_after:
        streak = 0
    delay = min(policy.cap, policy.initial * policy.factor ** min(streak, 64))
    return delay, streak + 1


def describe_exit(returncode: int) -> str:
    """``signal 9`` (SIGKILL) for a negative Popen return code, else ``code N``."""
    if returncode < 0:
        return f"signal {-returncode}"
    return f"code {returncode}"
