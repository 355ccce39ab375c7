"""The distributed state store on etcd v3 (the store itself: :mod:`aether.store.etcd.store`).

``settings`` names and reaches the cluster (URLs, options, TLS), ``wire`` is what
the JSON gateway speaks, ``transport`` sends requests with failover, ``watch``
follows changes; ``store`` is the ``StateStore`` built on them.
"""

from aether.store.etcd.settings import EtcdOptions, EtcdUrl, etcd_tls_context, parse_etcd_url
from aether.store.etcd.store import EtcdStateStore
from aether.store.etcd.wire import EtcdAuthError

__all__ = [
    "EtcdAuthError",
    "EtcdOptions",
    "EtcdStateStore",
    "EtcdUrl",
    "etcd_tls_context",
    "parse_etcd_url",
]
