"""The package version, in one place (the manifest and the resume fingerprint record it)."""

__version__ = "0.2.0"
