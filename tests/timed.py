"""A mark for tests that bound wall clock or loop stalls.

Its own light module: a test module that imports it may be imported again in a sandbox
worker (a function of it run there by reference), where the heavy tests/conftest.py would
add seconds of imports to the measured call.
"""

import pytest

# the machine is shared with other work, so a miss is tried twice more before it counts
# (a slow path fails all three)
TIMED = pytest.mark.flaky(reruns=2, reruns_delay=1)
