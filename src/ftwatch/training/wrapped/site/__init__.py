"""Put first on the PYTHONPATH of a command run by ``ftwatch run --``: Python imports its
``sitecustomize`` at start-up. A package only so that it ships with ftwatch (never imported as one)."""
