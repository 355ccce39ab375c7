"""The console's templates (Jinja2) and static files (CSS, its scripts, vendored uPlot).

The pages' Python lives in :mod:`aether.server.console`.
"""
