"""The deploy module: `python -m deploy <command>`, run by pipeline steps after infrastructure applies.

Start-up stays light: this package imports no Azure or MLflow SDK at import time. Each command's
module imports what it needs when it runs (see `deploy.cli.COMMANDS`).
"""
