"""Maintenance commands of the project (run with `python -m flexlora.tools.<name>`)."""
