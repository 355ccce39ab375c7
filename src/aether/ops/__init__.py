"""Operator tools: self-check, diagnostics bundle, installer profiles."""
