"""The package version, a leaf every side may import (``ftwatch.__version__`` re-exports it)."""

__version__ = "0.1.0"
