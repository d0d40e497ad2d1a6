"""A text run (config.text.enabled): its config rules, its data (templated labelled tasks,
chatterbot languages, JSONL files), its batches, its evaluation, and the main job end to
end on a tiny random decoder with SmolLM2's tokenizer (experiments/configs/instructions.py)."""

import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments.configs import instructions
from test_llm_tokenizer import write_gguf
from mtl_jax import config as config_lib
from mtl_jax.data.instructions import as_conversation, default_templates
from mtl_jax.data.pipeline import labelled_examples
from mtl_jax.data.text_data import GENERAL, load_text_data
from mtl_jax.errors import ConfigError
from mtl_jax.evaluation import text_eval
from mtl_jax.jobs import sweep
from mtl_jax.jobs.main import train_and_evaluate
from mtl_jax.models.decoder import Decoder, segment_mask
from mtl_jax.report import tables
from mtl_jax.tasks import TaskKind
from mtl_jax.tasks import get as get_task


@pytest.fixture
def config(data_dir):
  c = instructions.get_config('smoke')
  c.data.data_dir = data_dir
  return c


@pytest.fixture
def tiny_config(config, tmp_path):
  """The smoke config with a byte-level tokenizer of a few hundred tokens and a ChatML
  template: SmolLM2's 49,152-token output layer costs seconds a step on 8 CPU devices."""
  config.data.vocabulary = write_gguf(tmp_path / 'tiny.gguf')
  config.data.seq_len = 256
  return config


def _check(config):
  return config_lib.validate(config_lib.resolved(config))


def test_a_text_run_s_tasks_become_text_tasks_scored_by_their_kind(config):
  specs = {t.name: t for t in _check(config)}
  assert list(specs) == list(instructions.TRAINED)
  assert all(t.kind is TaskKind.TEXT for t in specs.values())
  assert specs['sentiment'].primary_metric == 'acc'  # it has options: rank classification
  assert specs['similarity'].primary_metric == 'bits_per_byte'  # a regression: no options
  assert 'answer_f1' in specs['chatterbot_english'].metrics  # max_new_tokens > 0: generated
  assert 'answer_f1' not in specs['sentiment'].metrics


@pytest.mark.parametrize('change, field, message', [
    (lambda c: setattr(c.text, 'held_out', ('sentiment',)), 'text.held_out', 'also trained'),
    (lambda c: setattr(c, 'tasks', ('chatterbot_klingon',)), 'tasks', 'no such language'),
    (lambda c: setattr(c, 'tasks', ('qa',)), 'tasks', 'needs config.text.jsonl.train'),
    (lambda c: c.text.templates.update({'sentiment': [['Say {nope}']]}),
     'text.templates.sentiment', r"refers to \['nope'\]"),
    (lambda c: c.text.templates.update({'chatterbot_english': [['{text}']]}),
     'text.templates.chatterbot_english', 'no labelled examples'),
    (lambda c: c.text.templates.update({'sentiment': 'Say {text}'}),
     'text.templates.sentiment', 'must be a list'),
    (lambda c: c.text.jsonl.update({'test': ['a.jsonl']}), 'text.jsonl.test', 'not one of'),
    (lambda c: c.text.jsonl.update({'train': ['/no/such.jsonl']}), 'text.jsonl.train',
     'no file'),
    (lambda c: setattr(c.text, 'loss_mean', 'median'), 'text.loss_mean', 'not one of'),
    (lambda c: setattr(c.text, 'general', '/no/such.txt'), 'text.general', 'no file'),
    (lambda c: c.text.clusters.update({'x': ['sentiment']}), 'text.clusters.x',
     'not held-out tasks'),
    (lambda c: setattr(c.text, 'held_out', ('general_text',)), 'tasks', 'rename the task'),
    (lambda c: setattr(c.adversary, 'enabled', True), 'adversary.enabled', 'mixes tasks'),
    (lambda c: (setattr(c.sampling, 'strategy', 'grouped'),
                setattr(c.text, 'examples_per_step', 3)), 'text.examples_per_step', 'draws none'),
    (lambda c: setattr(c.model, 'backbone', 'encoder'), 'text.enabled', 'decoder'),
    (lambda c: setattr(c.sampling, 'schedule', ((0, (1.0, 1.0)),)), 'sampling.schedule',
     'one rate per task'),
    (lambda c: setattr(c.sampling, 'schedule', ((9, (1, 1, 1, 1)), (3, (1, 1, 1, 1)))),
     'sampling.schedule', 'increasing steps'),
    (lambda c: (setattr(c.text, 'enabled', False), setattr(c, 'tasks', ('sentiment',)),
                setattr(c.sampling, 'schedule', ((0, (1.0,)),))),
     'sampling.schedule', 'text runs only'),
    (lambda c: setattr(c.data, 'vocabulary', ''), 'data.vocabulary', 'chat template'),
])
def test_a_bad_text_config_names_its_field(config, change, field, message):
  change(config)
  if config.model.backbone == 'encoder':  # the decoder's own fields would be refused first
    config.model.num_kv_heads = 0
  with pytest.raises(ConfigError, match=rf'config\.{field}: .*{message}'):
    _check(config)


# About 640 byte-level tokens: three windows of 256 overlapping by one.
GENERAL_TEXT = ('The river rose slowly through the night, and by morning the old mill stood '
                'in water to its second window. ') * 6


def _write(path, lines):
  path.write_text(''.join(line + '\n' for line in lines))
  return str(path)


@pytest.fixture
def jsonl_config(config, tmp_path):
  config.tasks = ('sentiment', 'qa')
  config.text.held_out = ('chatterbot_spanish',)
  train = _write(tmp_path / 'train.jsonl', [
      json.dumps({'task': 'qa', 'prompt': f'What is {i} + 1?', 'completion': str(i + 1)})
      for i in range(5)] + [json.dumps({'task': 'qa', 'messages': [
          {'role': 'system', 'content': 'Be brief.'}, {'role': 'user', 'content': 'Hi'},
          {'role': 'assistant', 'content': 'Hello'}]})])
  validation = _write(tmp_path / 'validation.jsonl', [
      json.dumps({'task': 'qa', 'prompt': 'What is 9 + 1?', 'completion': '10'})])
  config.text.jsonl = {'train': [train], 'validation': [validation]}
  return config


def test_text_data_reads_templates_chatterbot_and_jsonl_tasks(jsonl_config):
  config = jsonl_config
  data = load_text_data(config, config.text.held_out)
  assert data.tasks == ('sentiment', 'qa') and data.held_out == ('chatterbot_spanish',)
  qa = data.mixture.sources[1]
  assert [c.messages for c in qa][-1] == (('system', 'Be brief.'), ('user', 'Hi'),
                                          ('assistant', 'Hello'))
  assert data.eval['qa'].conversations[0].messages[-1] == ('assistant', '10')
  # A labelled task's examples in its templates; its options rank the label names, and the
  # right one is the reply its template writes for the label.
  task = get_task('sentiment')
  validation = labelled_examples(config.data, [task])['sentiment'].validation
  scored = data.eval['sentiment']
  assert len(scored.conversations) == config.text.eval_examples
  for i, conversation in enumerate(scored.conversations):
    expected = as_conversation(task, validation[i], i, config.seed, default_templates(task), '')
    assert conversation.messages == expected.messages
    assert scored.options[i] == task.label_names  # the default completion is '{answer}'
    assert scored.options[i][scored.labels[i]] == conversation.messages[-1][1]
  # A chatterbot language has no validation split: whole conversations are held apart.
  spanish = data.eval['chatterbot_spanish'].conversations
  assert spanish and all(c.task == 'chatterbot_spanish' for c in spanish)
  # The step's draws are packed into rows of the run's tasks.
  batch = next(data.batches(seed=0, batch_size=2, start_step=0, num_steps=1))
  assert set(np.unique(batch['task_ids'])) == {-1, 0, 1}
  # On a schedule that gives 'qa' no rate until step 100, step 0 draws sentiment only.
  config.sampling.schedule = ((0, (1.0, 0.0)), (100, (0.0, 1.0)))
  data = load_text_data(config, config.text.held_out)
  batch = next(data.batches(seed=0, batch_size=2, start_step=0, num_steps=1))
  assert set(np.unique(batch['task_ids'])) == {-1, 0}


def test_a_template_given_by_the_config_renders_the_examples(jsonl_config):
  jsonl_config.text.templates = {'sentiment': [['Is "{text}" happy? {options_inline}',
                                                'It is {answer}.']]}
  data = load_text_data(jsonl_config, jsonl_config.text.held_out)
  scored = data.eval['sentiment']
  conversation = scored.conversations[0]
  assert conversation.messages[0][1].startswith('Is "')
  assert conversation.messages[-1][1] == f'It is {scored.options[0][scored.labels[0]][6:]}'
  assert scored.options[0] == tuple(f'It is {n}.' for n in get_task('sentiment').label_names)


@pytest.mark.parametrize('line, message', [
    ('{"task": "qa", "prompt": "x"', 'not valid JSON'),
    (json.dumps({'task': 'qa', 'prompt': 'x'}), "no field 'completion'"),
    (json.dumps({'task': 'nope', 'prompt': 'x', 'completion': 'y'}), "task 'nope'"),
])
def test_a_bad_jsonl_line_is_refused_with_file_and_line_or_skipped(jsonl_config, line,
                                                                   message, tmp_path):
  path = jsonl_config.text.jsonl['train'][0]
  with open(path, 'a') as f:
    f.write(line + '\n')
  with pytest.raises(ValueError, match=rf'{path}:7: {message}'):
    load_text_data(jsonl_config, jsonl_config.text.held_out)
  jsonl_config.data.bad_rows = 'skip'
  data = load_text_data(jsonl_config, jsonl_config.text.held_out)
  assert len(data.skipped) == 1 and data.skipped[0].startswith(f'{path}:7: {message[:6]}')
  assert len(data.mixture.sources[1]) == 6


def test_a_task_without_examples_fails_before_training(jsonl_config, tmp_path):
  jsonl_config.text.jsonl = {'train': jsonl_config.text.jsonl['train']}
  with pytest.raises(ValueError, match=r"\['qa'\] have no validation examples"):
    load_text_data(jsonl_config, ())


def test_batches_are_a_function_of_the_step_so_a_resumed_run_reads_the_same(config):
  data = load_text_data(config, ())
  whole = list(data.batches(3, 4, 0, 5))
  resumed = list(data.batches(3, 4, 2, 5))
  mine = list(data.batches(3, 4, 2, 5, positions=np.array([1, 3])))  # one process's rows
  for step in range(2, 5):
    for key in ('input_ids', 'segment_ids', 'loss_mask'):
      np.testing.assert_array_equal(resumed[step - 2][key], whole[step][key])
      np.testing.assert_array_equal(mine[step - 2][key], whole[step][key][[1, 3]])


@pytest.mark.integration
def test_evaluation_of_a_text_run_is_its_parts(tiny_config, tmp_path):
  """evaluate_text against the text_eval functions called one task at a time."""
  config = tiny_config
  config.tasks = ('sentiment', 'chatterbot_english')
  config.text.general = _write(tmp_path / 'general.txt', [GENERAL_TEXT])
  data = load_text_data(config, ())
  assert len(data.general.windows) == 3
  cfg = config_lib.decoder_config(config.model, data.vocab_size)
  model = Decoder(cfg)
  dummy = jnp.zeros((1, 4), jnp.int32)
  params = nn.unbox(model.init(jax.random.key(1), dummy, dummy,
                               jnp.ones((1, 4, 4), bool))['params'])
  got = text_eval.evaluate_text(model, params, data, rows=4)
  tokenizer, length = data.tokenizer, 512
  sentiment = data.eval['sentiment']
  prompts = [c.messages[:-1] for c in sentiment.conversations]
  ranked = text_eval.rank_classification(model, params, tokenizer, prompts, sentiment.options,
                                         sentiment.labels, 4, length)
  alone = text_eval.loss_and_bits_per_byte(model, params, tokenizer,
                                           sentiment.conversations, 4, length)
  assert got['sentiment'] == pytest.approx({**ranked, **alone}, rel=1e-5)
  chat = data.eval['chatterbot_english'].conversations
  replies = text_eval.generated_answers(model, params, tokenizer,
                                        [c.messages[:-1] for c in chat], 4)
  expected = {**text_eval.loss_and_bits_per_byte(model, params, tokenizer, chat, 4, length),
              **text_eval.generative_scores(replies, [c.messages[-1][1] for c in chat])}
  assert got['chatterbot_english'] == pytest.approx(expected, rel=1e-5)
  # The general text: each window's forward alone, every token after the first predicted.
  nats = tokens = 0
  for window in data.general.windows:
    ids = jnp.asarray([window])
    positions = jnp.arange(len(window))[None]
    mask = segment_mask(jnp.ones_like(ids), positions)
    logits = model.apply({'params': params}, model.apply({'params': params}, ids, positions,
                                                         mask).hidden, method=Decoder.logits)
    nats += float(optax.softmax_cross_entropy_with_integer_labels(
        logits[0, :-1].astype(jnp.float32), ids[0, 1:]).sum())
    tokens += len(window) - 1
  text = GENERAL_TEXT + '\n'  # as _write wrote it
  assert tokens == len(data.tokenizer.encode(text, add_special_tokens=False)) - 1
  assert got[GENERAL] == pytest.approx(
      {'loss': nats / tokens, 'bits_per_byte': nats / (np.log(2) * len(text.encode('utf-8')))},
      rel=1e-5)


@pytest.mark.integration
def test_the_main_job_trains_a_text_mixture_and_scores_held_out_tasks(tiny_config, tmp_path):
  """With DoReMi's weights, whose reference losses the main job takes from the base model."""
  config = tiny_config
  config.mode = 'multi'
  config.weighting.name = 'doremi'
  config.log_every = 1
  config.text.general = _write(tmp_path / 'general.txt', [GENERAL_TEXT])
  report = train_and_evaluate(config, str(tmp_path))
  trained, held_out = list(instructions.TRAINED), list(instructions.HELD_OUT)
  assert list(report['multi']) == trained and list(report['base']) == trained
  assert list(report['held_out']['base']) == held_out
  assert list(report['held_out']['multi']) == held_out
  for task in trained:  # six steps from a random init learn the replies' tokens
    assert report['multi'][task]['loss'] < report['base'][task]['loss'] - 0.05
  # A cluster's gain is Δm% over its tasks of MTL against the base model (bits per byte:
  # lower is better, so a fall is a gain).
  held = report['held_out']
  dialogue = instructions.CLUSTERS['dialogue_in_other_languages']
  expected = np.mean([(held['base'][n]['bits_per_byte'] - held['multi'][n]['bits_per_byte'])
                      / held['base'][n]['bits_per_byte'] * 100 for n in dialogue])
  assert held['cluster_gain']['dialogue_in_other_languages'] == pytest.approx(expected)
  acc = held['multi']['entailment']['acc'], held['base']['entailment']['acc']
  assert held['cluster_gain']['inference'] == (
      pytest.approx((acc[0] - acc[1]) / acc[1] * 100) if acc[1] else None)
  forgetting = report['forgetting']
  assert set(forgetting) == {'text', 'base', 'multi'} and forgetting['text'] == config.text.general
  assert forgetting['multi']['loss'] != forgetting['base']['loss']
  packing = report['packing']
  assert packing['packed'] + packing['dropped'] == config.text.examples_per_step * 6
  assert packing['real_tokens'] <= packing['slots'] == 6 * config.batch_size * 256
  # Each step's weights are N α, α moved by the logged losses' excess over the base's.
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  reference = np.array([report['base'][t]['loss'] for t in trained])
  alpha = np.full(len(trained), 1 / len(trained))
  for record in records:
    np.testing.assert_allclose([record['task_weights'][t] for t in trained],
                               len(trained) * alpha, rtol=1e-4)
    losses = np.array([record['task_losses'][t] for t in trained])
    raw = alpha * np.exp(np.maximum(losses - reference, 0.0))
    alpha = 0.999 * raw / raw.sum() + 0.001 / len(trained)
  assert len(records) == 6
  with open(tmp_path / 'eval.json') as f:
    assert json.load(f) == json.loads(json.dumps(report))
  # Run again: every phase is read back or resumes at its end, and scores the same.
  assert train_and_evaluate(config, str(tmp_path)) == report


def test_a_grouped_text_run_packs_each_task_into_its_own_rows(config):
  config.sampling.strategy = 'grouped'
  specs = _check(config)
  data = load_text_data(config, ())
  batch = next(data.batches(config.seed, 8, 0, 1))
  for task in range(len(specs)):  # 8 rows, 4 tasks: rows 2t and 2t + 1 are task t's
    assert set(np.unique(batch['task_ids'][2 * task:2 * task + 2])) == {-1, task}


def test_a_text_sweep_reports_held_out_clusters_and_forgetting_per_method(tmp_path):
  """jobs.sweep's section on what no run trains on, from eval.json files written by hand."""
  primary = {'es': 'bits_per_byte', 'nli': 'acc'}
  scores = lambda es, nli: {'es': {'bits_per_byte': es}, 'nli': {'acc': nli}}
  base, general = scores(4.0, 0.5), {'bits_per_byte': 3.0}
  runs = {  # (method or None for STL, seed) -> eval.json
      (None, 0): {'single': {'a': {}, 'b': {}},
                  'held_out': {'primary_metric': primary, 'base': base,
                               'single': {'a': scores(3.0, 0.5), 'b': scores(3.6, 0.75)}},
                  'forgetting': {'base': general, 'single': {'a': {'bits_per_byte': 3.2},
                                                             'b': {'bits_per_byte': 3.4}}}},
      ('equal', 0): {'held_out': {'primary_metric': primary, 'base': base,
                                  'multi': scores(2.0, 0.25)},
                     'forgetting': {'base': general, 'multi': {'bits_per_byte': 3.6}}}}
  for (method, seed), report in runs.items():
    path = sweep.run_dir(str(tmp_path), method, seed)
    os.makedirs(path)
    with open(os.path.join(path, sweep.EVAL), 'w') as f:
      json.dump(report, f)
  rows = sweep.untrained_rows(str(tmp_path), ('equal',), (0,),
                              {'dialogue': ('es',), 'both': ('es', 'nli')})
  es, nli, general_text = 'es (bits_per_byte ↓)', 'nli (acc ↑)', f'{GENERAL} (bits_per_byte ↓)'
  assert rows['base'][0] == {es: 4.0, nli: 0.5, 'dialogue (gain %)': 0.0,
                             'both (gain %)': 0.0, general_text: 3.0}
  # MTL: bits per byte 4 -> 2 is +50%; accuracy 0.5 -> 0.25 is -50%.
  assert rows['equal'][0] == pytest.approx({es: 2.0, nli: 0.25, 'dialogue (gain %)': 50.0,
                                            'both (gain %)': 0.0, general_text: 3.6})
  # STL: the mean over the single-task models of each column (gains 25 and 10 on es;
  # on both: (25 + 0) / 2 and (10 + 50) / 2).
  assert rows['STL'][0] == pytest.approx({es: 3.3, nli: 0.625, 'dialogue (gain %)': 17.5,
                                          'both (gain %)': 21.25, general_text: 3.3})
  section = tables.untrained_section(rows)
  assert '| equal | 1 | 2.0000 ± 0.0000 | 0.2500 ± 0.0000 | 50.0000 ± 0.0000 |' in section
