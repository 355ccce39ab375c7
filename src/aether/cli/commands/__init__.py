"""One module per group of commands; each exposes ``run(args)``."""
