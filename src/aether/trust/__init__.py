"""The cluster's certificate authority and the mutual TLS built on it.

``ca`` issues and reads certificates (pure functions of their inputs and the
time given); ``tls`` turns them into ``ssl`` contexts. Shared by the server
(which holds the CA), the node (which holds a certificate) and the CLI (which
trusts the CA saved at login).
"""
