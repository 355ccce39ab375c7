"""The pure verdicts of ``aether doctor``, from facts alone."""

from __future__ import annotations

from aether.ops.doctor_probes import skew_seconds
from aether.ops.doctor_verdicts import (
    DirFacts,
    KvmFacts,
    clock_verdict,
    data_dir_verdict,
    disk_verdict,
    kvm_verdict,
    port_verdict,
    render,
)


def test_skew_allows_for_the_date_headers_whole_seconds() -> None:
    assert skew_seconds(100.2, 100.4, 100.0) == 0.0  # within [100, 101)
    assert skew_seconds(100.0, 100.0, 95.0) == 4.0  # 100 - 96
    assert skew_seconds(100.0, 100.0, 130.0) == -30.0


def test_clock_thresholds() -> None:
    assert clock_verdict("s", 0.5).status == "ok"
    assert clock_verdict("s", -1.5).status == "warn"
    assert clock_verdict("s", 31.0).status == "fail"
    assert "behind" in clock_verdict("s", -31.0).detail
    assert clock_verdict("s", None, "refused").status == "fail"


def test_kvm_reasons() -> None:
    assert kvm_verdict(KvmFacts(exists=False)).status == "fail"
    denied = kvm_verdict(KvmFacts(exists=True, open_error="Permission denied"))
    assert denied.status == "fail" and "kvm group" in denied.fix
    pvm = kvm_verdict(KvmFacts(exists=True, api_version=12, cpu_virt=False, pvm=True))
    assert pvm.status == "fail" and "kvm_pvm" in pvm.detail
    no_vm = kvm_verdict(KvmFacts(exists=True, api_version=12, vm_error="Device busy"))
    assert no_vm.status == "fail" and "KVM_CREATE_VM" in no_vm.detail
    assert kvm_verdict(KvmFacts(exists=True, api_version=12, cpu_virt=True)).status == "ok"


def test_data_dir_and_disk() -> None:
    mine = DirFacts("/d", exists=True, mode=0o40700, owner=5, uid=5, writable=True)
    assert data_dir_verdict(mine).status == "ok"
    group_writable = DirFacts("/d", exists=True, mode=0o40770, owner=5, uid=5, writable=True)
    assert data_dir_verdict(group_writable).status == "fail"
    missing = DirFacts("/d", exists=False, uid=5, ancestor="/", ancestor_writable=False)
    assert data_dir_verdict(missing).status == "fail"
    assert disk_verdict("/", 512 << 20, 10 << 30).status == "fail"
    assert disk_verdict("/", 2 << 30, 10 << 30).status == "warn"
    assert disk_verdict("/", 50 << 30, 100 << 30).status == "ok"


def test_port_and_render() -> None:
    assert port_verdict("api", "h", 1, "", False).status == "ok"
    assert port_verdict("api", "h", 1, "Address in use", True).status == "warn"
    taken = port_verdict("api", "h", 1, "Address in use", False)
    text = render([taken, clock_verdict("s", 0.0)])
    assert "fix: stop what listens" in text and text.endswith("1 ok, 0 warn, 1 fail, 0 skip")
