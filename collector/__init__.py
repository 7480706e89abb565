"""Self-hostable, Segment-compatible event collector with an Attuitive-compatible profile API."""

__version__ = "0.1.0"
