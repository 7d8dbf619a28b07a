"""Discord cogs, one per feature."""
