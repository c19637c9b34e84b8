"""rotator: rotate X account avatars on a schedule through the Xquik API."""

__version__ = "0.1.0"
