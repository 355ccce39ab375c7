"""Aether: turn one or many Linux machines into a self-driving platform."""

__version__ = "0.2.0"
