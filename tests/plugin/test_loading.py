"""How the plugin is loaded: never in our own run, always in pytester's inner sessions.

pyproject's addopts block the ``compress`` entry point in the outer run, so the tests
of the pytest-free layers cannot lean on the plugin. An inner session builds its own
plugin manager from its own command line and ini file, so it loads the entry point
exactly as a user's ``pytest`` does, in process or in a subprocess.
"""

from __future__ import annotations

import pytest

PROBE = """
def test_probe(pytestconfig):
    plugin = pytestconfig.pluginmanager.get_plugin("compress")
    assert plugin is not None and plugin.__name__ == "pytest_compress.plugin"
    assert any(line.startswith("compress(") for line in pytestconfig.getini("markers"))
"""


def test_the_outer_run_does_not_load_the_plugin(pytestconfig):
    assert pytestconfig.pluginmanager.is_blocked("compress")
    assert pytestconfig.pluginmanager.get_plugin("compress") is None
    assert not any(line.startswith("compress(") for line in pytestconfig.getini("markers"))


@pytest.mark.parametrize("how", ["runpytest_inprocess", "runpytest_subprocess"])
def test_an_inner_session_loads_the_plugin_through_its_entry_point(pytester, how):
    pytester.makepyfile(test_probe=PROBE)
    getattr(pytester, how)("-p", "no:cacheprovider").assert_outcomes(passed=1)
