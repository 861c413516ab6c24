"""The ftwatch commands, one module each (see ftwatch.cli)."""
