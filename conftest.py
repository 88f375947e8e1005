"""Root conftest for ft-harness's own test runs (the plugin itself is loaded via its entry point).

Registers the hypothesis profiles ``ft-default`` (500 examples), ``ft-ci`` (200, derandomized) and
``ft-thorough`` (5000), and loads ``ft-default`` unless ``--hypothesis-profile`` is given.
"""

from hypothesis import settings

from harness.strategies import register_profiles

pytest_plugins = ["pytester"]

register_profiles()


def pytest_configure(config):
    if not config.getoption("hypothesis_profile", None):
        settings.load_profile("ft-default")
