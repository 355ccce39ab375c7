"""The version-skew policy's verdicts: servers first, a node one minor behind is fine."""

from __future__ import annotations

from aether.model.compat import parse_version, skew_warning


def test_parse_version() -> None:
    assert parse_version("0.2.0") == (0, 2, 0)
    assert parse_version("1.10.3rc1") == (1, 10, 3)
    assert parse_version("0.2") is None
    assert parse_version("main") is None


def test_supported_pairs_are_quiet() -> None:
    assert skew_warning("0.2.0", "0.2.0") is None
    assert skew_warning("0.2.1", "0.2.0") is None  # patch releases do not matter
    assert skew_warning("0.1.0", "0.2.0") is None  # one minor behind keeps working
    assert skew_warning("0.2.0", "dev") is None  # nothing to compare


def test_a_node_newer_than_its_server_is_told_to_upgrade_the_servers() -> None:
    warning = skew_warning("0.3.0", "0.2.0")
    assert warning is not None and "servers upgrade first" in warning
    old = skew_warning("0.2.0", None)  # 0.1.0 reported no version
    assert old is not None and "reports no version" in old and "servers upgrade first" in old


def test_a_node_two_minors_behind_is_told_to_upgrade_itself() -> None:
    warning = skew_warning("0.1.0", "0.3.0")
    assert warning is not None and "upgrade this node" in warning
    assert skew_warning("0.9.0", "1.0.0") is not None  # another major
