"""Shared pytest configuration. Reusable helpers live in tests/support/ (import as support.*)."""

import os

from hypothesis import settings

# A move the file lifecycle does not allow raises in tests (in this process and in every
# daemon the tests start), instead of failing only the file as in production.
os.environ["ACQUIRED_STRICT_LIFECYCLE"] = "1"

# CI draws the same examples on every run, so a red build always reproduces; developers'
# runs keep exploring new ones (and print the blob to reproduce what they find).
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("dev", print_blob=True)
settings.load_profile("ci" if os.environ.get("CI") else "dev")
