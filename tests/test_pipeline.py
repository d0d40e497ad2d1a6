"""The built-in suite through TFDS and grain, its scored splits, feature tables, and
step-indexed batches."""

import collections
import zlib

import numpy as np
import pytest

from mtl_jax import tasks as task_lib
from mtl_jax.data import builtin_suite, builtin_tfds, mixture
from mtl_jax.data.features import concat_tables, encode_examples
from mtl_jax.data.pipeline import (eval_batches, load_task_data, scaled_tasks, task_view,
                                   train_batches, train_table)
from mtl_jax.evaluation.evaluate import evaluate

SIZES = dict(train_size=24, eval_size=8, relatedness=0.5, seed=3)


def _key(task, ex):
  return (task, tuple(map(tuple, ex.inputs)),
          tuple(sorted((k, str(v)) for k, v in ex.labels.items())))


def test_tfds_round_trip_equals_the_generator(data_dir):
  cfg = builtin_tfds.suite_config(**SIZES)
  sources = builtin_tfds.data_sources(cfg, data_dir)
  assert set(sources) == set(builtin_tfds.SPLITS)
  stored = builtin_tfds.load_split(sources['validation'])
  assert list(stored) == list(builtin_suite.TASKS)
  for task in builtin_suite.TASKS:
    assert len(stored[task]) == SIZES['eval_size']
    seed = builtin_tfds.zlib.crc32(f'3/validation/{task}'.encode())
    generated = [builtin_tfds.to_example({**r, 'similarity': np.float32(r['similarity'])})
                 for r in builtin_suite.generate_examples(task, 8, seed, 0.5)]
    assert collections.Counter(_key(*g) for g in generated) == collections.Counter(
        _key(task, ex) for ex in stored[task])


def test_vocabulary_is_built_once_and_deterministic(data_dir, tmp_path):
  cfg = builtin_tfds.suite_config(**SIZES)
  path = builtin_tfds.vocabulary(cfg, data_dir, 200)
  other = builtin_tfds.vocabulary(cfg, str(tmp_path), 200)
  assert open(path).read() == open(other).read()
  assert open(path).read().split('\n')[:5] == ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]']


def _data_cfg(smoke_config):
  smoke_config.data.update(SIZES)
  return smoke_config.data


def _all_rows(data):
  return train_table(data, np.arange(sum(data.train_sizes)))


def test_tables_hold_every_task_label_under_masks(smoke_config):
  tasks = tuple(task_lib.get(n) for n in ('pos', 'sentiment', 'entailment', 'similarity'))
  data = load_task_data(_data_cfg(smoke_config), tasks)
  # Home datasets with a label of a run task: all 7 (every single-sentence set has pos labels).
  assert data.train_names == builtin_suite.TASKS
  assert data.train_sizes == (24,) * 7
  seq = smoke_config.data.seq_len
  table = _all_rows(data)
  assert table['input_ids'].shape == (24 * 7, seq)
  np.testing.assert_array_equal(table['domain'], np.repeat(np.arange(7), 24))
  masks = table['label_masks']
  single, pair = slice(0, 24 * 5), slice(24 * 5, 24 * 7)
  assert masks['sentiment'][single].all() and not masks['sentiment'][pair].any()
  assert masks['entailment'][pair].all() and not masks['entailment'][single].any()
  assert masks['pos'][single].any(axis=1).all() and not masks['pos'][pair].any()
  assert set(data.eval) == {'pos', 'sentiment', 'entailment', 'similarity'}


def test_each_task_is_scored_on_data_eval_splits_the_first_primary(smoke_config):
  cfg = _data_cfg(smoke_config)
  cfg.eval_splits = ('validation', 'test')
  task = task_lib.get('sentiment')
  data = load_task_data(cfg, (task,))
  assert list(data.eval['sentiment']) == ['validation', 'test']
  validation, test = data.eval['sentiment']['validation'], data.eval['sentiment']['test']
  assert len(test['input_ids']) == SIZES['eval_size']
  assert not np.array_equal(test['input_ids'], validation['input_ids'])  # other sentences
  predict = lambda params, batch: {'sentiment': np.zeros(len(batch['input_ids']), np.int32)}
  metrics = evaluate(predict, None, (task,), data.eval, batch_size=4)['sentiment']
  assert set(metrics) == {'accuracy', 'f1', 'matthews', 'test/accuracy', 'test/f1',
                          'test/matthews'}
  for prefix, table in (('', validation), ('test/', test)):  # class 0 everywhere
    assert metrics[prefix + 'accuracy'] == pytest.approx(
        np.mean(table['labels']['sentiment'] == 0))


def test_single_task_sees_only_its_labelled_datasets(smoke_config):
  data = load_task_data(_data_cfg(smoke_config), (task_lib.get('entailment'),))
  assert data.train_names == ('entailment', 'similarity')
  assert set(_all_rows(data)['labels']) == {'entailment'}


def test_batches_are_static_deterministic_and_resumable(smoke_config):
  tasks = tuple(task_lib.get(n) for n in ('chunk', 'topic', 'similarity'))
  data = load_task_data(_data_cfg(smoke_config), tasks)
  sampling = smoke_config.sampling
  full = list(train_batches(data, sampling, seed=5, batch_size=8, start_step=0, num_steps=6))
  again = list(train_batches(data, sampling, seed=5, batch_size=8, start_step=0, num_steps=6))
  resumed = list(train_batches(data, sampling, seed=5, batch_size=8, start_step=3, num_steps=6))
  other_seed = next(train_batches(data, sampling, seed=6, batch_size=8, start_step=0,
                                  num_steps=1))
  assert len(full) == 6 and len(resumed) == 3
  for a, b in zip(full, again):
    np.testing.assert_array_equal(a['input_ids'], b['input_ids'])
  for a, b in zip(full[3:], resumed):
    for key in ('input_ids', 'segment_ids', 'attention_mask'):
      np.testing.assert_array_equal(a[key], b[key])
    np.testing.assert_array_equal(a['labels']['chunk'], b['labels']['chunk'])
  assert not np.array_equal(full[0]['input_ids'], other_seed['input_ids'])
  for batch in full:
    assert batch['input_ids'].shape == (8, smoke_config.data.seq_len)
    assert batch['labels']['chunk'].shape == (8, smoke_config.data.seq_len)
    assert batch['labels']['topic'].shape == batch['label_masks']['similarity'].shape == (8,)


def test_eval_batches_cover_each_row_once():
  table = {'input_ids': np.arange(10)[:, None], 'labels': {'t': np.arange(10)}}
  seen = []
  for batch, valid in eval_batches(table, 4):
    assert batch['input_ids'].shape == (4, 1)
    seen.extend(batch['labels']['t'][:valid])
  assert seen == list(range(10))


def test_grouped_batches_hold_each_task_from_its_own_dataset(smoke_config):
  tasks = tuple(task_lib.get(n) for n in ('pos', 'sentiment', 'entailment', 'similarity'))
  data = load_task_data(_data_cfg(smoke_config), tasks)
  smoke_config.sampling.strategy = 'grouped'
  batches = list(train_batches(data, smoke_config.sampling, seed=1, batch_size=8,
                               start_step=0, num_steps=3))
  # Every input row is recognised by the home dataset whose rows hold it.
  offsets = np.concatenate([[0], np.cumsum(data.train_sizes)])
  inputs = _all_rows(data)['input_ids']
  for batch in batches:
    for i, task in enumerate(data.tasks):
      group = slice(2 * i, 2 * i + 2)
      home = data.train_names.index(task)
      home_rows = inputs[offsets[home]:offsets[home + 1]]
      for row in batch['input_ids'][group]:
        assert (home_rows == row).all(axis=1).any()
      for other in data.tasks:
        labelled = batch['label_masks'][other].reshape(8, -1).any(axis=1)
        assert labelled[group].all() == (other == task) and (other == task or
                                                              not labelled[group].any())
  again = next(train_batches(data, smoke_config.sampling, 1, 8, 0, 1))
  np.testing.assert_array_equal(again['input_ids'], batches[0]['input_ids'])
  with pytest.raises(ValueError, match='divisible by the number of tasks'):
    next(train_batches(data, smoke_config.sampling, 1, 6, 0, 1))


def test_a_process_reads_only_the_rows_it_feeds_and_views_reuse_them(smoke_config, data_dir):
  tasks = tuple(task_lib.get(n) for n in ('pos', 'sentiment', 'entailment'))
  data = load_task_data(_data_cfg(smoke_config), tasks)
  assert not any(len(data.train.read(h)) for h in range(7))
  # A second implementation: every training example tokenised at once, in home order.
  train = builtin_tfds.load_split(builtin_tfds.data_sources(
      builtin_tfds.suite_config(**SIZES), data_dir)['train'])
  whole = concat_tables([encode_examples(train[home], tasks, data.tokenizer,
                                         smoke_config.data.seq_len)
                         for home in data.train_names])
  offsets = np.concatenate([[0], np.cumsum(data.train_sizes)])

  def check(batch, rows, names):
    for key in ('input_ids', 'segment_ids', 'attention_mask'):
      np.testing.assert_array_equal(batch[key], whole[key][rows])
    assert set(batch['labels']) == set(names)
    for name in names:
      np.testing.assert_array_equal(batch['labels'][name], whole['labels'][name][rows])
      np.testing.assert_array_equal(batch['label_masks'][name],
                                    whole['label_masks'][name][rows])

  positions = np.arange(4, 8)  # process 1 of 2: the second half of each batch of 8
  batches = list(train_batches(data, smoke_config.sampling, 2, 8, 1, 4, positions))
  probabilities = mixture.mixture_probabilities(data.train_sizes, 'proportional')
  fed = [mixture.sample_rows(2, step, 8, data.train_sizes, probabilities)[positions]
         for step in range(1, 4)]
  for batch, rows in zip(batches, fed, strict=True):
    check(batch, rows, [t.name for t in tasks])
    np.testing.assert_array_equal(batch['domain'],
                                  np.searchsorted(offsets, rows, side='right') - 1)
  read = np.concatenate([data.train.read(h) + offsets[h] for h in range(7)])
  np.testing.assert_array_equal(read, np.unique(fed))  # at most 12 of the 168 rows

  # entailment alone draws from the pair datasets, with rows numbered within them.
  view = task_view(data, 'entailment')
  assert view.train_names == ('entailment', 'similarity')
  batch = next(train_batches(view, smoke_config.sampling, 2, 8, 0, 1))
  rows = mixture.sample_rows(2, 0, 8, view.train_sizes, mixture.mixture_probabilities(
      view.train_sizes, 'proportional'))
  check(batch, rows + offsets[data.train_names.index('entailment')], ['entailment'])


@pytest.mark.parametrize('standardize', [True, False])
def test_regression_targets_are_scaled_by_their_training_mean_and_std(smoke_config, standardize):
  """Task.target_scale is a standard scaler fitted on every training target the task sees:
  here the similarity labels of both pair home datasets, generated again independently."""
  cfg = _data_cfg(smoke_config)
  cfg.standardize_targets = standardize
  tasks = (task_lib.get('sentiment'), task_lib.get('similarity'))
  data = load_task_data(cfg, tasks)
  scaled = scaled_tasks(tasks, data)
  assert scaled[0] == tasks[0]
  if not standardize:
    assert scaled[1] == tasks[1] and scaled[1].target_scale is None
    return
  values = [ex['similarity'] for home in ('entailment', 'similarity')
            for ex in builtin_suite.generate_examples(
                home, 24, zlib.crc32(f'3/train/{home}'.encode()), 0.5)]
  np.testing.assert_allclose(scaled[1].target_scale, (np.mean(values), np.std(values)),
                             rtol=1e-6)
  assert scaled[1].target_scale[1] > 0.5  # the suite's similarities spread over [0, 5]


def test_label_fraction_keeps_a_tasks_labels_on_a_prefix_of_each_home(smoke_config):
  """data.label_fraction: sentiment keeps its labels on the first ceil(0.2 * 24) = 5 rows of
  each single-sentence home dataset, similarity on the first 12 of each pair one (its scaler
  fitted on those alone); other tasks keep every label; every row stays in the mixture."""
  cfg = _data_cfg(smoke_config)
  cfg.label_fraction = {'sentiment': 0.2, 'similarity': 0.5}
  tasks = tuple(task_lib.get(n) for n in ('pos', 'sentiment', 'similarity'))
  data = load_task_data(cfg, tasks)
  assert data.train_sizes == (24,) * 7
  masks = _all_rows(data)['label_masks']
  row = np.tile(np.arange(24), 7)
  single = np.repeat(np.arange(7), 24) < 5
  np.testing.assert_array_equal(masks['sentiment'], single & (row < 5))
  np.testing.assert_array_equal(masks['similarity'], ~single & (row < 12))
  assert masks['pos'][single].any(axis=1).all()
  # The scaler's rows are the ones whose masks are on: the stored order's first 12.
  homes = [data.train.homes[data.train.names.index(h)] for h in ('entailment', 'similarity')]
  kept = [home[i].labels['similarity'] for home in homes for i in range(12)]
  every = [ex.labels['similarity'] for home in homes for ex in home]
  scale = scaled_tasks(tasks, data)[2].target_scale
  np.testing.assert_allclose(scale, (np.mean(kept), np.std(kept)), rtol=1e-6)
  assert not np.allclose(scale, (np.mean(every), np.std(every)), rtol=1e-6)
