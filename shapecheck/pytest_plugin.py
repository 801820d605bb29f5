"""pytest plugin (filled in by the pytest-plugin work)."""
