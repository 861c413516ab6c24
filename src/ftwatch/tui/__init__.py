"""The terminal dashboard (Textual). The command line calls :func:`ftwatch.tui.app.run_dashboard`.

Importing this package imports nothing heavy; ``ftwatch.tui.app`` loads Textual.
"""
