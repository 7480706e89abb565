"""Build-time and start-up schema generation: the spec DSL, the base spec, tracking plans."""
