"""Everything that writes to the log."""

__all__: list[str] = []
