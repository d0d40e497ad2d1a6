"""MT-DNN's smoke run on TFDS mock data (experiments/configs/mtdnn.py:smoke: the tiny BERT,
then each task fine-tuned), MultiRC's exact match, and the leaderboard files of the run."""

import json
import os

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorflow_datasets as tfds

from experiments.configs import mtdnn
from mtl_jax import config as config_lib
from mtl_jax import tasks as task_lib
from mtl_jax.data import tfds_source
from mtl_jax.data.features import Example
from mtl_jax.data.pipeline import load_task_data
from mtl_jax.data.tokenizer import load_pretrained_tokenizer
from mtl_jax.jobs import main as main_job
from mtl_jax.jobs import submit
from mtl_jax.metrics import exact_match
from mtl_jax.train import loop

MULTIRC = task_lib.get('superglue_multirc')


def test_exact_match_counts_questions_with_every_option_right():
  # Questions 'a' (3 options, all right), 'b' (2 options, one wrong), 'c' (1 option, right),
  # their rows interleaved: EM = 2/3, while accuracy over options would be 5/6.
  group = np.array(['a', 'b', 'a', 'c', 'b', 'a'])
  label = np.array([1, 0, 0, 1, 1, 0])
  pred = np.array([1, 0, 0, 1, 0, 0])
  assert exact_match(pred, label, group) == pytest.approx(2 / 3)
  assert exact_match(label, label, group) == 1.0
  assert exact_match(1 - label, label, group) == 0.0
  with pytest.raises(ValueError, match='one entry per row'):
    exact_match(pred, label, group[:-1])


def test_multirc_rows_are_grouped_by_paragraph_and_question():
  idx = [{'paragraph': 0, 'question': 1, 'answer': 0}, {'paragraph': 1, 'question': 1,
                                                         'answer': 0},
         {'paragraph': 0, 'question': 1, 'answer': 1}, {'paragraph': 0, 'question': 2,
                                                         'answer': 0}]
  examples = [Example(('p', 'q a'), {}, idx=i) for i in idx]
  np.testing.assert_array_equal(tfds_source.group_ids(MULTIRC, examples), [0, 1, 0, 2])
  assert tfds_source.group_ids(task_lib.get('superglue_boolq'), examples) is None
  assert tfds_source.group_ids(MULTIRC, [ex._replace(idx=None) for ex in examples]) is None
  assert submit.multirc_lines(idx, [1, 0, 0, 1]) == [
      {'idx': 0, 'passage': {'questions': [
          {'idx': 1, 'answers': [{'idx': 0, 'label': 1}, {'idx': 1, 'label': 0}]},
          {'idx': 2, 'answers': [{'idx': 0, 'label': 1}]}]}},
      {'idx': 1, 'passage': {'questions': [{'idx': 1, 'answers': [{'idx': 0, 'label': 0}]}]}}]


def test_ax_needs_the_mnli_head():
  cola = task_lib.get('glue_cola')
  with pytest.raises(ValueError, match="'glue_ax'.*head of 'glue_mnli'"):
    submit.submitted_tasks((cola,), ('glue_ax',))
  assert [t.name for t in submit.submitted_tasks((cola,))] == ['glue_cola']
  assert [t.name for t in submit.submitted_tasks((task_lib.get('glue_mnli'),))] == [
      'glue_mnli', 'glue_ax']


def test_label_strings(tmp_path):
  """SuperGLUE's spellings: BoolQ and WiC 'true'/'false', CB and RTE label names, COPA the
  choice's index; GLUE's binary tasks write class ids and STS-B a score clipped to [0, 5]."""
  examples = [Example(('a', 'b'), {}, idx=i) for i in (7, 3)]
  for name, preds, labels in (('superglue_boolq', [1, 0], ['true', 'false']),
                              ('superglue_wic', [0, 1], ['false', 'true']),
                              ('superglue_cb', [2, 1], ['neutral', 'contradiction']),
                              ('superglue_rte', [1, 0], ['not_entailment', 'entailment']),
                              ('superglue_copa', [1, 0], [1, 0]),
                              ('glue_wnli', [1, 0], ['1', '0']),
                              ('glue_stsb', [5.25, -0.1234], ['5.0', '0.0']),
                              ('glue_stsb', [2.71828, 0.5], ['2.718', '0.5'])):
    path = str(tmp_path / name)
    submit.write_file(path, task_lib.get(name), examples, np.array(preds))
    with open(path) as f:
      if name.startswith('glue'):
        assert f.read() == f'index\tprediction\n7\t{labels[0]}\n3\t{labels[1]}\n'
      else:
        assert [json.loads(line) for line in f] == [
            {'idx': 7, 'label': labels[0]}, {'idx': 3, 'label': labels[1]}]


# ----------------------------------------------------------------------------
# End to end: a tiny run on mock data, then its files.

# SuperGLUE's other builders need TensorFlow even under mock_data, and each task costs a
# fine-tuning fit: the other tasks' files are tested on hand-made rows in
# test_label_strings.
TASKS = ('glue_mnli', 'superglue_multirc')
NUM_EXAMPLES = 8  # mock rows per split


@pytest.fixture(scope='module')
def run(tmp_path_factory):
  """A finished run (MTL, then 1 fine-tuning step per task) and its mock data folder."""
  tmp = tmp_path_factory.mktemp('submit')
  config = mtdnn.get_config('smoke')
  config.tasks, config.num_steps, config.log_every = TASKS, 2, 1
  config.data.data_dir = str(tmp / 'data')
  config.finetune.num_steps = 1
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    report = main_job.train_and_evaluate(config, str(tmp / 'run'))
  return str(tmp / 'run'), report


def _records(task, split, data_dir):
  source = tfds_source.data_source(task.source, split, data_dir)
  return [source[i] for i in range(len(source))]


def _independent_outputs(workdir: str, fit_dir: str, head: str, task, split: str):
  """The head's outputs on a split's records, from the raw checkpoint, the tokenizer loaded
  afresh and model.apply: none of submit's restore, table or batching code."""
  with open(os.path.join(workdir, 'config.json')) as f:
    ran = json.load(f)
  step = max(int(s) for s in os.listdir(os.path.join(fit_dir, 'checkpoints')))
  state = ocp.StandardCheckpointer().restore(
      os.path.join(fit_dir, 'checkpoints', str(step), 'state'))
  config = mtdnn.get_config('smoke')
  config.tasks = tuple(ran['tasks']) if fit_dir == workdir else (head,)
  config.data.data_dir = ran['data']['data_dir']
  config = config_lib.resolved(config)
  tasks = config_lib.validate(config)
  model = config_lib.build_model(config, tasks, ran['model']['vocab_size'])
  tokenizer = load_pretrained_tokenizer(ran['data']['vocabulary'], ran['data']['seq_len'])
  data = tfds_source.tfds_data(task)
  texts = [tfds_source.to_example(task, data, r).inputs for r in _records(
      task, split, config.data.data_dir)]
  enc = tokenizer.encode_batch([t[0] if len(t) == 1 else tuple(t) for t in texts])
  inputs = [np.asarray([getattr(e, k) for e in enc], np.int32)
            for k in ('ids', 'type_ids', 'attention_mask')]
  return np.asarray(model.apply({'params': state['params']}, *inputs,
                                deterministic=True).tasks[head])


@pytest.mark.integration
@pytest.mark.parametrize('phase', ['multi', 'finetune'])
def test_submission_files(run, phase, tmp_path):
  workdir, _ = run
  data_dir = json.load(open(os.path.join(workdir, 'config.json')))['data']['data_dir']
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    submit.main([workdir, '--phase', phase, '--out', str(tmp_path)])
    assert sorted(os.listdir(tmp_path)) == sorted(['MNLI-m.tsv', 'MNLI-mm.tsv', 'AX.tsv',
                                                   'MultiRC.jsonl'])
    expected_files = [('glue_mnli', 'test_matched', 'MNLI-m.tsv'),
                      ('glue_mnli', 'test_mismatched', 'MNLI-mm.tsv'),
                      ('glue_ax', 'test', 'AX.tsv'),
                      ('superglue_multirc', 'test', 'MultiRC.jsonl')]
    for name, split, file in expected_files:
      task = task_lib.get(name)
      head = 'glue_mnli' if name == 'glue_ax' else name
      fit_dir = workdir if phase == 'multi' else os.path.join(workdir, phase, head)
      out = _independent_outputs(workdir, fit_dir, head, task, split)
      idx = [r['idx'] for r in _records(task, split, data_dir)]
      with open(tmp_path / file) as f:
        lines = f.read().splitlines()
      if file.endswith('.tsv'):
        assert lines[0] == 'index\tprediction'
        rows = [line.split('\t') for line in lines[1:]]
        assert [int(i) for i, _ in rows] == [int(i) for i in idx]
        # MNLI's label names, for AX too
        assert [p for _, p in rows] == [
            ('entailment', 'neutral', 'contradiction')[k] for k in out.argmax(-1)]
      else:  # MultiRC: read the nested file back to one label per (p, q, a)
        got = {(p['idx'], q['idx'], a['idx']): a['label'] for p in map(json.loads, lines)
               for q in p['passage']['questions'] for a in q['answers']}
        want = {tuple(int(i[k]) for k in ('paragraph', 'question', 'answer')): int(k)
                for i, k in zip(idx, out.argmax(-1))}
        assert got == want and len(got) == NUM_EXAMPLES


@pytest.mark.integration
def test_multirc_exact_match_end_to_end(run):
  """The run's EM on mock validation data equals EM recomputed from the records' idx and
  independent predictions of the final model."""
  workdir, report = run
  data_dir = json.load(open(os.path.join(workdir, 'config.json')))['data']['data_dir']
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    records = _records(MULTIRC, 'validation', data_dir)
    pred = _independent_outputs(workdir, workdir, MULTIRC.name, MULTIRC, 'validation').argmax(-1)
  right = {}
  for r, p in zip(records, pred):
    key = (int(r['idx']['paragraph']), int(r['idx']['question']))
    right[key] = right.get(key, True) and int(p) == int(r['label'])
  assert report['multi'][MULTIRC.name]['exact_match'] == pytest.approx(
      np.mean(list(right.values())))


@pytest.mark.integration
def test_the_mtdnn_smoke_run_fine_tunes_each_task_of_the_pretrained_encoder(run):
  workdir, report = run
  assert set(report['multi']) == set(report['finetuned']) == set(TASKS)
  assert all(np.isfinite(v) for m in report['finetuned'].values() for v in m.values())
  for name in TASKS:
    assert task_lib.get(name).primary_metric in report['finetuned'][name]
  with open(os.path.join(workdir, 'config.json')) as f:
    ran = json.load(f)
  # The checkpoint fixed the encoder and its tokenizer came from the same folder.
  assert ran['data']['vocabulary'] == mtdnn.get_config('smoke').model.pretrained
  assert ran['model']['hidden_size'] == 32 and ran['model']['vocab_size'] == 64


@pytest.mark.integration
def test_trained_params_are_the_finished_fits_last_checkpoint(run):
  workdir, _ = run
  config = submit.run_config(workdir)
  tasks = config_lib.validate(config)
  with tfds.testing.mock_data(num_examples=NUM_EXAMPLES):
    data = load_task_data(config.data, tasks)
  args = main_job.fit_args(config, tasks, data, workdir, 'multi')
  _, params = loop.trained_params(*args)
  raw = ocp.StandardCheckpointer().restore(
      os.path.join(workdir, 'checkpoints', str(config.num_steps), 'state'))
  jax.tree.map(np.testing.assert_array_equal, params, raw['params'])
  config.num_steps += 1  # as if the run had stopped one step short
  with pytest.raises(ValueError, match=f'step {config.num_steps - 1}, not the last step'):
    loop.trained_params(*args)
  with pytest.raises(FileNotFoundError, match='checkpoint.every=0'):
    loop.trained_params(*main_job.fit_args(config, tasks, data, workdir, 'single', tasks[0]))
