"""Multiple-choice tasks (SuperGLUE COPA): candidate inputs in the tables, one score per
candidate from the model, and training on every layout and architecture (TFDS mock data)."""

import json
import os
import pathlib

import flax.linen as nn
import numpy as np
import pytest
import scipy.special
import tensorflow_datasets as tfds

from mtl_jax import config as config_lib
from mtl_jax import tasks as task_lib
from mtl_jax.data import tfds_source
from mtl_jax.data.features import Example, encode_examples
from mtl_jax.data.pipeline import load_task_data, task_view, train_batches
from mtl_jax.data.tokenizer import load_wordpiece
from mtl_jax.models import architectures
from mtl_jax.models.encoder import EncoderConfig
from mtl_jax.objectives.losses import loss_vector
from mtl_jax.tasks import TaskKind
from mtl_jax.tasks.glue import TFDS
from mtl_jax.jobs.main import train_and_evaluate
from mtl_jax.train.loop import init_params
from mtl_jax.train.step import make_predict_step

COPA, RTE = task_lib.get('superglue_copa'), task_lib.get('glue_rte')


def test_copa_is_a_two_choice_task_read_from_its_records():
  assert (COPA.kind, COPA.num_labels, COPA.num_outputs) == (TaskKind.MULTIPLE_CHOICE, 2, 1)
  assert task_lib.num_choices((RTE,)) == 1 and task_lib.num_choices((RTE, COPA)) == 2
  record = {'premise': b'The man broke his toe.', 'question': 'cause', 'idx': 4,
            'choice1': 'He dropped a hammer.', 'choice2': b'He got a hole in his sock.',
            'label': np.int64(0)}
  ex = tfds_source.to_example(COPA, TFDS['superglue_copa'], record)
  assert ex == Example((), {'superglue_copa': 0}, (
      ('The man broke his toe.', 'What was the cause? He dropped a hammer.'),
      ('The man broke his toe.', 'What was the cause? He got a hole in his sock.')), idx=4)
  ex = tfds_source.to_example(COPA, TFDS['superglue_copa'], {**record, 'label': -1})
  assert ex.labels == {'superglue_copa': None}


@pytest.fixture
def tokenizer(tmp_path):
  words = 'the man broke his toe what was cause he dropped a hammer it rained'.split()
  (tmp_path / 'vocab.txt').write_text(
      '\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]', '?', '.'] + words))
  return load_wordpiece(str(tmp_path / 'vocab.txt'), seq_len=12)


def test_a_table_holds_every_candidate_and_other_rows_fill_the_first(tokenizer):
  copa = Example((), {'superglue_copa': 1}, (('the man', 'he dropped a hammer'),
                                             ('the man', 'it rained')))
  rte = Example(('the man broke his toe', 'he broke'), {'glue_rte': 0})
  unlabelled = copa._replace(labels={'superglue_copa': None})
  table = encode_examples([copa, rte, unlabelled], (RTE, COPA), tokenizer, 12)
  assert table['input_ids'].shape == (3, 2, 12)
  for row, ex in ((0, copa), (2, unlabelled)):
    for c, pair in enumerate(ex.choices):
      enc = tokenizer.encode(*pair)
      np.testing.assert_array_equal(table['input_ids'][row, c], enc.ids)
      np.testing.assert_array_equal(table['segment_ids'][row, c], enc.type_ids)
      np.testing.assert_array_equal(table['attention_mask'][row, c], enc.attention_mask)
  np.testing.assert_array_equal(table['input_ids'][1, 0], tokenizer.encode(*rte.inputs).ids)
  for key in ('input_ids', 'segment_ids', 'attention_mask'):  # an empty slot
    assert not table[key][1, 1].any()
  np.testing.assert_array_equal(table['label_masks']['superglue_copa'], [1, 0, 0])
  np.testing.assert_array_equal(table['labels']['superglue_copa'], [1, 0, 0])
  np.testing.assert_array_equal(table['label_masks']['glue_rte'], [0, 1, 0])
  with pytest.raises(ValueError, match=r"row 0: task 'superglue_copa' has invalid label"):
    encode_examples([copa._replace(labels={'superglue_copa': 2})], (COPA,), tokenizer, 12)


@pytest.mark.integration
@pytest.mark.parametrize('architecture,args', [
    ('hard', {}), ('shared_private', {'private_hidden_size': 8}), ('mmoe', {'num_experts': 2}),
    ('hierarchical', {'task_layers': 1}), ('soft', {})])
def test_each_candidate_is_scored_by_the_head_on_its_own_input(architecture, args):
  """The model's (B, C) scores equal the head applied to each candidate's sentence feature,
  computed one candidate at a time; the other task reads the first candidate."""
  cfg = EncoderConfig(vocab_size=30, hidden_size=16, num_layers=1, num_heads=2,
                      intermediate_size=32, max_len=8)
  model = architectures.build(architecture, cfg, (COPA, RTE), args)
  params = nn.unbox(init_params(model, 0, 8))
  rng = np.random.default_rng(0)
  ids = rng.integers(1, 30, (3, 2, 8)).astype(np.int32)
  segments = np.zeros_like(ids)
  mask = np.ones_like(ids)
  mask[:, 1, 5:] = 0
  output = model.apply({'params': params}, ids, segments, mask)
  # The architecture on one candidate's rows at a time (its row-level encode and decode).
  rows = [model.apply({'params': params}, ids[:, c], segments[:, c], mask[:, c],
                      method=lambda m, *inputs: m.decode(m.encode(*inputs)))
          for c in range(2)]
  np.testing.assert_allclose(output.tasks['superglue_copa'],
                             np.stack([r.tasks['superglue_copa'] for r in rows], 1),
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(output.tasks['glue_rte'], rows[0].tasks['glue_rte'],
                             rtol=1e-5, atol=1e-6)
  head = params['head_superglue_copa']['classifier']
  if architecture == 'hard':  # against the head's own formula, w·pooled + b
    pooled = [model.apply({'params': params}, ids[:, c], segments[:, c], mask[:, c],
                          method='encode')['pooled'] for c in range(2)]
    expected = np.stack([p @ head['kernel'][:, 0] + head['bias'][0] for p in pooled], 1)
    np.testing.assert_allclose(output.tasks['superglue_copa'], expected, rtol=1e-5, atol=1e-6)
  predict = make_predict_step(model, (COPA, RTE))(params, {
      'input_ids': ids, 'segment_ids': segments, 'attention_mask': mask})
  np.testing.assert_array_equal(predict['superglue_copa'],
                                np.argmax(output.tasks['superglue_copa'], -1))


class _FakeCopa(tfds.core.GeneratorBasedBuilder):
  """SuperGLUE COPA's features, written here without TensorFlow (which its builder needs)."""
  VERSION = tfds.core.Version('1.0.2')
  WORDS = 'the man broke his toe dropped a hammer it rained sun rose'.split()

  def _info(self):
    text = tfds.features.Text()
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'premise': text, 'choice1': text, 'choice2': text, 'question': text, 'idx': np.int32,
        'label': tfds.features.ClassLabel(names=['choice1', 'choice2'])}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples(0, 24), 'validation': self._generate_examples(1, 8)}

  def _generate_examples(self, seed, n):
    rng = np.random.default_rng(seed)
    sentence = lambda: ' '.join(rng.choice(self.WORDS, 4))
    for i in range(n):
      yield i, {'premise': sentence(), 'choice1': sentence(), 'choice2': sentence(),
                'question': ('cause', 'effect')[i % 2], 'idx': i, 'label': i % 2}


@pytest.fixture
def copa_config(smoke_config):
  """Built-in tagging and pair tasks with COPA (a fake prepared next to the suite's data in
  data_dir/super_glue/copa, where the reader finds prepared SuperGLUE tasks), without
  dropout or warmup so that runs compare exactly."""
  data_dir = pathlib.Path(smoke_config.data.data_dir)
  if not (data_dir / 'super_glue' / 'copa').exists():
    builder = _FakeCopa(data_dir=str(data_dir / 'build'), file_format='array_record')
    builder.download_and_prepare()
    (data_dir / 'super_glue' / 'copa').mkdir(parents=True)
    os.rename(builder.data_dir, data_dir / 'super_glue' / 'copa' / '1.0.2')
  smoke_config.tasks = ('pos', 'entailment', 'superglue_copa')
  smoke_config.mode = 'multi'
  smoke_config.sampling.strategy = 'uniform'  # COPA rows in every batch
  smoke_config.data.vocab_size = 100
  smoke_config.num_steps, smoke_config.log_every = 4, 1
  smoke_config.checkpoint.every = 0
  smoke_config.logging.representations = 4
  smoke_config.optimizer.warmup_steps, smoke_config.optimizer.schedule = 0, 'constant'
  smoke_config.model.dropout_rate = smoke_config.model.attention_dropout_rate = 0.0
  smoke_config.model.head_dropout_rate = 0.0
  return smoke_config


def _log(workdir):
  with open(workdir / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


@pytest.mark.integration
def test_copa_trains_the_same_on_the_mesh_pmap_and_micro_batches(copa_config, tmp_path):
  """Choices ride on the rows' trailing axes: slicing rows over devices or micro-batches
  keeps each example's candidates together. The adversary reads each example once."""
  config = copa_config
  config.adversary.enabled = True
  layouts = {'mesh': {}, 'pmap': {'parallelism': 'pmap'},
             'micro': {'micro_batches': 2, 'mesh.data': 2, 'mesh.fsdp': 4, 'mesh.devices': 0}}
  logs = {}
  for name, overrides in layouts.items():
    run = config.copy_and_resolve_references()
    run.update_from_flattened_dict(overrides)
    report = train_and_evaluate(run, str(tmp_path / name))
    assert set(report['multi']) == set(config.tasks)
    logs[name] = _log(tmp_path / name)
  assert sum(r['task_counts']['superglue_copa'] > 0 for r in logs['mesh']) >= 3
  for name in ('pmap', 'micro'):
    for a, b in zip(logs['mesh'], logs[name], strict=True):
      for key in ('loss', 'adversary_loss'):
        np.testing.assert_allclose(b[key], a[key], rtol=2e-5, atol=1e-6, err_msg=f'{name} {key}')
      np.testing.assert_allclose(list(b['task_losses'].values()),
                                 list(a['task_losses'].values()), rtol=2e-5, atol=1e-6)


def test_the_copa_loss_is_cross_entropy_over_the_candidates():
  """The task loss against softmax cross-entropy over the candidates, written with scipy."""
  scores = np.array([[0.3, -1.2], [2.0, 0.5], [0.0, 0.1]], np.float32)
  labels = np.array([1, 0, 1])
  mask = np.array([1.0, 1.0, 0.0], np.float32)
  losses, counts = loss_vector((COPA,), {'superglue_copa': scores},
                               {'superglue_copa': labels}, {'superglue_copa': mask})
  nll = -scipy.special.log_softmax(scores, axis=1)[np.arange(3), labels]
  np.testing.assert_allclose(losses[0], nll[:2].mean(), rtol=1e-6)
  assert counts[0] == 2


@pytest.mark.integration
def test_single_task_baselines_of_a_run_with_copa_read_their_own_inputs(copa_config, tmp_path):
  """A run with COPA holds two inputs per row; a baseline of another task reads the first
  (the one MTL gave it) as (n, S) rows, and COPA's baseline both."""
  config = copa_config
  config.mode, config.num_steps = 'single', 2
  data = load_task_data(config.data, config_lib.validate(config))
  seq = config.data.seq_len
  pos = task_view(data, 'pos')
  assert pos.eval['pos']['validation']['input_ids'].shape[1:] == (seq,)
  np.testing.assert_array_equal(pos.eval['pos']['validation']['input_ids'],
                                data.eval['pos']['validation']['input_ids'][:, 0])
  assert next(train_batches(pos, config.sampling, 0, 8, 0, 1))['input_ids'].shape == (8, seq)
  copa = task_view(data, 'superglue_copa')
  assert next(train_batches(copa, config.sampling, 0, 8, 0, 1))['input_ids'].shape == (8, 2, seq)
  report = train_and_evaluate(config, str(tmp_path / 'run'))
  assert set(report['single']) == set(config.tasks)
