"""The local etcd cluster the tests start (it lives in the package: `aether up --ha` uses it)."""

from aether.store.etcd_local import INSTALL_HINT, EtcdCluster, etcd_binary, free_port

__all__ = ["INSTALL_HINT", "EtcdCluster", "etcd_binary", "free_port"]
