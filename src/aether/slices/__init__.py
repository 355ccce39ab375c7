"""Slices: typed Python entry points as the unit of deployment (docs/slices.md).

This package runs inside slice sandboxes as well as in the node and the router:
it imports only the standard library and pydantic.
"""
