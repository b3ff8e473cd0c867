"""Everything that reads the log: the materializer, control state, shared log types."""

__all__: list[str] = []
