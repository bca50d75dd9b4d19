"""The pytest plugin (placeholder until the plugin core lands)."""
