"""Subcommand modules of the ``velora`` CLI, one per area (light to import; see ``cli.main``)."""
