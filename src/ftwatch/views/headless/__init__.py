"""The headless view: progress lines and the end-of-run summary (text or JSON), and the followers
that drive them for ``run --headless`` and ``attach --headless``."""
