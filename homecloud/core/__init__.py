"""The shared core: imports nothing else of ours, and only the Python standard library."""
