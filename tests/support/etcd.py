"""The local etcd cluster the tests start (it lives in the package: `aether up --ha` uses it)."""

from aether.store.etcd_local import (
    INSTALL_HINT,
    EtcdCluster,
    Pki,
    etcd_binary,
    etcdctl_binary,
    make_pki,
)

__all__ = [
    "INSTALL_HINT",
    "EtcdCluster",
    "Pki",
    "etcd_binary",
    "etcdctl_binary",
    "make_pki",
]
