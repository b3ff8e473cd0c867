"""Subcommand modules of the ``velora`` CLI, one per area."""
