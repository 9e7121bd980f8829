"""What the tests do when a build tool is missing: skip with the reason on a developer's
machine; under ``CI=true`` fail, because a missing tool there is a failure, not a skip."""
import os

import pytest


def missing_tool(why: str) -> None:
    """Skip the calling test with ``why``, or fail it with ``why`` under ``CI=true``."""
    if os.environ.get("CI") == "true":
        pytest.fail(why)
    pytest.skip(why)
