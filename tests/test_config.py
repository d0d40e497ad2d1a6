"""The config is validated before anything is built, with errors that name the field."""

import os
import subprocess
import sys
import typing

import ml_collections
import pytest

from mtl_jax import schema, weighting
from experiments.configs import (bert_mini, default, gradient_aggregation, loss_weighting,
                                 representation_aggregation, sharing)
from mtl_jax.config import build_model, build_weighting, validate
from mtl_jax.errors import ConfigError
from mtl_jax.models import architectures
from mtl_jax.tasks import builtin

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _set(config, field: str, value):
  *parents, leaf = field.split('.')
  node = config
  for p in parents:
    node = node[p]
  node[leaf] = value


def test_default_configs_are_valid():
  assert [t.name for t in validate(default.get_config())] == [t.name for t in builtin.TASKS]
  assert len(validate(bert_mini.get_config())) == 4


@pytest.mark.parametrize('field,value,message', [
    ('tasks', ('sentiment', 'sentimnt'), r"config.tasks: unknown task\(s\) \['sentimnt'\]"),
    ('tasks', (), 'config.tasks: name at least one task'),
    ('tasks', ('topic', 'topic'), 'config.tasks: lists a task twice'),
    ('task_weights', (1.0, 2.0), 'config.task_weights: has 2 entries for 7 tasks'),
    ('task_weights', (1.0,) * 6 + (-1.0,), 'config.task_weights: weights must be >= 0'),
    ('task_depths', (1,) * 7 + (2,), 'config.task_depths: has 8 entries'),
    ('task_depths', (1, 2, 3, 1, 1, 1, 1), "config.task_depths: task 'sentiment' depth 3"),
    ('data.train_size', -5, r'config.data.train_size: must be > 0, got -5'),
    ('batch_size', 0, 'config.batch_size: must be > 0'),
    ('model.dropout_rate', -0.1, 'config.model.dropout_rate: must be >= 0'),
    ('model.pair_head_hidden', -1, 'config.model.pair_head_hidden: must be an integer >= 0'),
    ('mode', 'joint', "config.mode: 'joint' is not one of"),
    ('sampling.strategy', 'annealed', "config.sampling.strategy: 'annealed'"),
    ('data.relatedness', 1.5, r'config.data.relatedness: must lie in \[-1, 1\]'),
    ('data.label_fraction', {'sentimnt': 0.5},
     "config.data.label_fraction.sentimnt: 'sentimnt' is not a task of the run"),
    ('data.label_fraction', {'topic': 0.0},
     r'config.data.label_fraction.topic: must be a fraction in \(0, 1\], got 0.0'),
    ('data.seq_len', 65, 'config.data.seq_len: 65 exceeds model.max_len 64'),
    ('data.eval_splits', (), 'config.data.eval_splits: must name one or more of'),
    ('data.eval_splits', ('validation', 'dev'), r"config.data.eval_splits: .* got \('valid"),
    ('data.eval_splits', ('test', 'test'), 'config.data.eval_splits: .* each once'),
    ('model.num_heads', 3, 'config.model.num_heads: hidden_size 128 is not divisible by 3'),
    ('optimizer.schedule', 'step', "config.optimizer.schedule: 'step'"),
    ('weighting.name', 'pcgard', "config.weighting.name: 'pcgard' is not one of"),
    ('weighting.mode', 'features', "config.weighting.mode: 'features' is not one of"),
    ('model.architecture', 'tree', "config.model.architecture: 'tree' is not one of"),
    ('adversary.loss', 'wasserstein', "config.adversary.loss: 'wasserstein' is not one of"),
    ('adversary.optimization', 'joint', "config.adversary.optimization: 'joint' is not one"),
    ('adversary.schedule', 'step', "config.adversary.schedule: 'step' is not one of"),
    ('adversary.weight', -0.1, 'config.adversary.weight: must be >= 0'),
    ('adversary.learning_rate', 0.0, 'config.adversary.learning_rate: must be > 0'),
])
def test_bad_config_names_the_field(field, value, message):
  config = default.get_config()
  _set(config, field, value)
  with pytest.raises(ConfigError, match=message):
    validate(config)


def test_depth_override_reaches_the_task_spec():
  config = default.get_config()
  config.task_depths = (1, 1, -1, -1, -1, 2, -1)
  tasks = validate(config)
  assert [t.depth for t in tasks] == [1, 1, -1, -1, -1, 2, -1]


def test_unknown_variant():
  with pytest.raises(ValueError, match="Unknown variant 'tiny'"):
    default.get_config('tiny')


def test_static_weights_only_with_the_static_method():
  config = default.method_config('gls', 'params', diagnostics=False)
  config.task_weights = (1.0,) * 7
  with pytest.raises(ConfigError, match="config.task_weights: static weights are given, but "
                                        "weighting.name is 'gls'"):
    validate(config)


def test_bad_method_argument_names_the_field():
  config = default.method_config('gls', 'params', diagnostics=False)
  config.weighting.args.nonsense = 3
  with pytest.raises(ConfigError, match='config.weighting.args: gls: .*nonsense'):
    build_weighting(config)


@pytest.mark.parametrize('module', [loss_weighting, gradient_aggregation,
                                    representation_aggregation])
def test_every_method_config_builds(module):
  methods = getattr(module, 'METHODS', gradient_aggregation.METHODS)
  for name in methods:
    config = module.get_config(name)
    validate(config)
    method = build_weighting(config)
    assert config.weighting.diagnostics == (method.needs is not weighting.Needs.LOSSES)
  with pytest.raises(ValueError, match='Unknown variant'):
    module.get_config('nope')


@pytest.mark.parametrize('variant', [*architectures.ARCHITECTURES, 'asp_mtl'])
def test_sharing_configs_build_their_architecture(variant):
  config = sharing.get_config(variant)
  model = build_model(config, validate(config), 100)
  assert isinstance(model, architectures.ARCHITECTURES[config.model.architecture])
  assert config.adversary.enabled == (variant == 'asp_mtl')


@pytest.mark.parametrize('args,message', [
    ({'private_size': 32}, r"config.model.args: shared_private: no field\(s\) \['private_size'\]"),
    ({'private_heads': 3}, 'config.model.args: shared_private: private_hidden_size 64 is not '
                           'divisible by private_heads 3'),
    ({'orthogonality': -1.0}, 'orthogonality must be >= 0'),
])
def test_bad_architecture_args_name_the_field(args, message):
  config = sharing.get_config('shared_private')
  config.model.args.update(args)
  with pytest.raises(ConfigError, match=message):
    build_model(config, validate(config), 100)


def test_vocabulary_smaller_than_the_tokenizer_s():
  config = default.get_config()
  config.model.vocab_size = 50
  with pytest.raises(ConfigError, match="config.model.vocab_size: 50 is smaller"):
    build_model(config, validate(config), 100)


def test_unknown_fields_are_named_with_the_closest_known_one():
  from experiments.configs import glue, mtdnn, scale, sharing
  for config in (default.get_config('smoke'), glue.get_config(), mtdnn.get_config('smoke'),
                 sharing.get_config('asp_mtl'), scale.get_config('1b')):
    assert schema.unknown_fields(config) == []
  config = default.get_config()
  config.num_step = 5
  config.model.hiden_size = 3
  config.model.args.anything = 1  # an architecture's own arguments are free-form
  config.data.label_fraction.conflict = 0.5  # so are a dict field's keys
  assert schema.unknown_fields(config) == [
      'model.hiden_size (did you mean model.hidden_size?)', 'num_step (did you mean num_steps?)']


def test_every_field_has_a_description_and_a_default_of_its_type():
  for field in schema.FIELDS:
    assert field.help.strip() and '\n' not in field.help, field.path
    assert type(field.default) is (typing.get_origin(field.type) or field.type), field.path
    assert schema.is_a(field.default, field.type), field.path
  assert len(schema.BY_PATH) == len(schema.FIELDS)  # each field once


def test_the_default_job_is_the_schema_s_defaults_with_its_reference():
  config, defaults = default.get_config(), schema.defaults()
  assert config.reference.endswith(os.path.join('experiments', 'reference', 'default.json'))
  config.reference = defaults.reference
  assert config.to_dict() == defaults.to_dict()


@pytest.mark.parametrize('value,kind,fits', [
    (3, int, True), (True, int, False), (3.0, int, False), (3, float, True),
    (False, float, False), (True, bool, True), (1, bool, False), ('a', str, True),
    (['a', 'b'], tuple[str, ...], True), (('a', 1), tuple[str, ...], False),
    ((1, 0.5), tuple[float, ...], True), ((('x', None),), tuple, True), ({}, dict, True),
])
def test_a_value_fits_a_field_type(value, kind, fits):
  assert schema.is_a(value, kind) == fits


def test_docs_config_md_holds_the_rendered_schema():
  with open(os.path.join(ROOT, 'docs', 'config.md')) as f:
    assert schema.describe() in f.read(), 'docs/config.md is stale: paste schema.describe()'


@pytest.mark.parametrize('field,value,message', [
    ('model.pooler', 1, 'config.model.pooler: must be True or False, got 1'),
    ('optimizer.b1', '0.9', "config.optimizer.b1: must be a number, got '0.9'"),
    ('task_weights', (1.0, 'a'),
     r"config.task_weights: must be a tuple of float, got \(1.0, 'a'\)"),
])
def test_a_field_of_the_wrong_type_is_named(field, value, message):
  """On a copy without ConfigDict's type checks, which refuse some of these on assignment."""
  config = ml_collections.ConfigDict(default.get_config().to_dict(), type_safe=False)
  _set(config, field, value)
  with pytest.raises(ConfigError, match=message):
    validate(config)


@pytest.mark.slow
def test_a_config_file_with_a_typo_fails_before_anything_is_written(tmp_path):
  config_file = tmp_path / 'typo.py'
  config_file.write_text('from experiments.configs import default\n\n\n'
                         'def get_config():\n'
                         '  c = default.get_config("smoke")\n'
                         '  c.num_step = 5\n'
                         '  return c\n')
  result = subprocess.run(
      [sys.executable, '-m', 'mtl_jax.train', '--config', str(config_file),
       '--workdir', str(tmp_path / 'run')], cwd=ROOT, capture_output=True, text=True,
      timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
  assert result.returncode == 2
  assert result.stderr.splitlines()[-1] == (
      'FATAL config error: the config sets fields that the schema (mtl_jax/schema.py) does not '
      'have: num_step (did you mean num_steps?).')
  assert not (tmp_path / 'run').exists()
