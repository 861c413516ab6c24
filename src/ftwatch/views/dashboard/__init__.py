"""The terminal dashboard (Textual). The command line calls :func:`ftwatch.views.dashboard.app.run_dashboard`.

Importing this package imports nothing heavy; ``ftwatch.views.dashboard.app`` loads Textual.
"""
