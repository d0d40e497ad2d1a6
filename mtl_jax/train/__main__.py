"""python -m mtl_jax.train --config experiments/configs/default.py[:variant] --workdir DIR

The same command again after a kill or a preemption resumes the run (docs/checkpoints.md).
A run stopped by SIGTERM saves its checkpoint first and exits with status 143.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax import schema
from mtl_jax.errors import ConfigError
from mtl_jax.jobs.main import train_and_evaluate
from mtl_jax.train import checkpoint
from mtl_jax.train.host_memory import keep_step_buffers_resident

config_flags.DEFINE_config_file('config', None, 'Experiment config file (a get_config()).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where metrics, evaluation and the config are written.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing with its errors in one line, an override of a field the config
  lacks included (ml_collections raises a bare AttributeError from inside the parser)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:  # a bad value, e.g. --config.batch_size=a
    _refuse(f'Flags parsing error: {e}')
  except AttributeError as e:
    _refuse(f'Flags parsing error: the config has no field {str(e).strip(chr(34))}; '
            f'a --config.FIELD override must name a field of the config file (a typo?).')


def _refuse(message: str):
  """A bad config or command line: one line on stderr and exit status 2, no traceback."""
  print(f'FATAL {message}', file=sys.stderr)
  sys.exit(2)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.ERROR)  # TFDS and JAX log routine notices as warnings
  keep_step_buffers_resident()
  unknown = schema.unknown_fields(flags.FLAGS.config)
  if unknown:
    _refuse(f'config error: the config sets fields that the schema (mtl_jax/schema.py) does '
            f'not have: {", ".join(unknown)}.')
  try:
    train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)
  except ConfigError as e:
    _refuse(f'config error: {e}')
  except checkpoint.Preempted as e:
    print(e, file=sys.stderr)
    sys.exit(checkpoint.PREEMPTED_EXIT_CODE)


if __name__ == '__main__':
  app.run(main, flags_parser=parse_flags)
