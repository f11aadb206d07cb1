"""The package version, in one place (the package face and the server report it)."""

__version__ = "0.1.0"
