"""The ingestion pipeline: pure stages (no Starlette), from a parsed request to stored events."""
