"""The package version, in one place: the model directory, index and AWS tags record it."""

__version__ = "0.1.0"
