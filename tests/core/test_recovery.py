"""The pure parts of a stateful app's recovery point: the checkpoint interval and the
time of writes a replacement misses."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from aether.core.snapshots import missing_seconds
from aether.model.app import AppSpec, CheckpointSpec


def test_the_checkpoint_interval_defaults_to_five_seconds_and_zero_switches_it_off() -> None:
    assert CheckpointSpec().interval == 5.0
    assert CheckpointSpec(interval=0).interval == 0.0
    spec = AppSpec.model_validate(
        {
            "name": "c",
            "start": "x",
            "stateful": True,
            "state_dir": "d",
            "checkpoint": {"interval": 2},
        }
    )
    assert spec.checkpoint.interval == 2.0
    with pytest.raises(ValidationError):
        CheckpointSpec(interval=-1)


@pytest.mark.parametrize(
    ("orphan", "restored", "missing"),
    [
        (110.0, 100.0, 10.0),  # the orphan holds 10 s of writes the replacement lacks
        (100.0, 100.0, 0.0),
        (90.0, 100.0, 0.0),  # never negative
        (100.0, None, 100.0),  # the replacement started empty
    ],
)
def test_missing_seconds(orphan: float, restored: float | None, missing: float) -> None:
    assert missing_seconds(orphan, restored) == missing
