"""The ASGI edge: the front door and one module per API surface."""
