"""The console's templates (Jinja2) and static files (CSS, its scripts, vendored htmx and uPlot).

The pages' Python lives in :mod:`aether.server.console`.
"""
