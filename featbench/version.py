"""The package version, in the ground layer so every module can stamp it on what it writes."""

__version__ = "0.1.0"
