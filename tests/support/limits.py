"""The small limits the integration tests' service runs with, so that the 413 paths are cheap
to reach over loopback: set by tests/integration/conftest.py, asserted by the tests."""

MAX_BODY_BYTES = 2_000_000
MAX_IMAGE_BYTES = 1_000_000
MAX_IMAGE_PIXELS = 4_000_000
MAX_ID_LENGTH = 256
MAX_BULK_ITEMS = 12
MAX_BULK_BYTES = 6_000_000
