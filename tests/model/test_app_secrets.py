"""``[secrets]`` in aether.toml: env names and secret files, checked before a deploy."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from aether.model.app import AppSpec


def _spec(secrets: dict[str, Any], **more: Any) -> AppSpec:
    return AppSpec.model_validate({"name": "a", "start": "x", "secrets": secrets, **more})


def test_the_toml_shape_and_the_stored_shape_are_the_same_spec() -> None:
    spec = _spec({"DB_PASSWORD": "db-password", "files": {"./config//creds.json": "creds"}})
    assert spec.secrets.env == {"DB_PASSWORD": "db-password"}
    assert spec.secrets.files == {"config/creds.json": "creds"}
    assert spec.secrets.names() == ["creds", "db-password"]
    assert AppSpec.model_validate(spec.model_dump(mode="json")) == spec
    assert _spec({}).secrets.names() == []


@pytest.mark.parametrize(
    ("secrets", "more", "problem"),
    [
        ({"db_password": "x"}, {}, "upper-case"),
        ({"DB": "not a name!"}, {}, "not a secret's name"),
        ({"PORT": "x"}, {}, "the node sets this variable"),
        ({"AETHER_APP": "x"}, {}, "the node sets this variable"),
        ({"files": {"../etc/passwd": "x"}}, {}, "without '..'"),
        ({"files": {"/etc/passwd": "x"}}, {}, "relative path"),
        (
            {"files": {"state/creds": "x"}},
            {"stateful": True, "state_dir": "state"},
            "inside state_dir",
        ),
    ],
)
def test_what_is_refused(secrets: dict[str, Any], more: dict[str, Any], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        _spec(secrets, **more)
