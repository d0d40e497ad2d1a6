import os

# Several CPU devices for the multi-device tests; must be set before JAX starts.
os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=4')

import pytest

from experiments.configs import default


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
  """One TFDS data dir for the session: each suite setting is generated once."""
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.fixture
def smoke_config(data_dir):
  config = default.get_config('smoke')
  config.data.data_dir = data_dir
  return config
