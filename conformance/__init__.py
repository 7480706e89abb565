"""The conformance kit: data-driven cases that any vendor runs against their own collector.

The kit never imports `collector`: it only speaks HTTP to a target (and, for the inspect
profile, to a declared read-back capability), so a vendor can run it with nothing but
`pip install` of this project.
"""

KIT_VERSION = "2.0.0"
SPEC_VERSION = "1.0"
