"""python -m mtl_jax.train --config experiments/configs/default.py[:variant] --workdir DIR"""

from absl import app, flags, logging
from ml_collections import config_flags

from mtl_jax.train.host_memory import keep_step_buffers_resident
from mtl_jax.train.loop import train_and_evaluate

config_flags.DEFINE_config_file('config', None, 'Experiment config file (a get_config()).',
                                lock_config=True)
flags.DEFINE_string('workdir', None, 'Where metrics, evaluation and the config are written.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.ERROR)  # TFDS and JAX log routine notices as warnings
  keep_step_buffers_resident()
  train_and_evaluate(flags.FLAGS.config, flags.FLAGS.workdir)


if __name__ == '__main__':
  app.run(main)
