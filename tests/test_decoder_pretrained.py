"""A decoder run that starts from a pretrained LLM (config.model.pretrained), and what is done
with the decoder it trains: generation from its workdir (mtl_jax.generate --workdir) and the
export as a Hugging Face folder (mtl_jax.jobs.export).

The "pretrained" LLM here is a tiny random decoder written by llama_checkpoint.write_hf with a
byte-level BPE tokenizer and a ChatML template (test_llm_tokenizer's tiny GGUF tokenizer)."""

import dataclasses
import json
import os
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_llm_tokenizer import write_gguf

from conftest import build_step
from mtl_jax import config as config_lib
from mtl_jax.data import llm_tokenizer
from mtl_jax.errors import ConfigError
from mtl_jax.jobs import export
from mtl_jax.jobs import main as main_job
from mtl_jax.models import llama_checkpoint
from mtl_jax.models import decoder as decoder_lib
from mtl_jax.models.decoder import Decoder, DecoderConfig
from mtl_jax.models.generation import Generator, Sampling
from mtl_jax.models.hf_folder import CheckpointError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREEDY = Sampling(0.0, 0, 1.0)


def _random_llm(folder: str, tokenizer: llm_tokenizer.LlmTokenizer) -> tuple[DecoderConfig, dict]:
  """Writes a random tiny decoder (GQA, head_dim 12 != 32 / 4, untied) with `tokenizer`."""
  cfg = DecoderConfig(vocab_size=tokenizer.vocab_size, hidden_size=32, num_layers=2,
                      num_heads=4, num_kv_heads=2, head_dim=12, intermediate_size=64,
                      max_position_embeddings=96, tie_word_embeddings=False, rope_theta=500.0)
  z = jnp.zeros((1, 4), jnp.int32)
  params = jax.device_get(nn.unbox(Decoder(cfg).init(
      jax.random.key(3), z, z, decoder_lib.segment_mask(z + 1, z)))['params'])
  files = os.path.join(os.path.dirname(folder), 'tokenizer_files')
  tokenizer.save(files)
  llama_checkpoint.write_hf(folder, cfg, params,
                            {n: os.path.join(files, n) for n in os.listdir(files)})
  return cfg, params


@pytest.fixture(scope='module')
def llm(tmp_path_factory):
  """(folder, its DecoderConfig, its parameters, its tokenizer)."""
  root = tmp_path_factory.mktemp('llm')
  tokenizer = llm_tokenizer.from_gguf(write_gguf(root / 'tokenizer.gguf'))
  folder = str(root / 'tiny_llm')
  cfg, params = _random_llm(folder, tokenizer)
  return folder, cfg, params, llm_tokenizer.from_folder(folder)


def _run_config(smoke_config, folder):
  c = smoke_config
  c.mode, c.tasks = 'multi', ('sentiment', 'pos')
  c.model.backbone, c.model.pretrained = 'decoder', folder
  c.data.seq_len = 64  # a byte-level BPE with 9 merges spends about a token per character
  c.logging.eval_every, c.logging.representations = 0, 0
  return c


def test_a_decoder_run_starts_from_the_checkpoint_with_its_tokenizer(smoke_config, llm):
  folder, cfg, params, tokenizer = llm
  config = config_lib.resolved(_run_config(smoke_config, folder))
  model_fields = {f: config.model[f] for f in ('vocab_size', 'hidden_size', 'num_layers',
                                               'num_heads', 'num_kv_heads', 'head_dim',
                                               'intermediate_size', 'max_len', 'rope_theta',
                                               'tie_word_embeddings')}
  assert model_fields == dict(vocab_size=cfg.vocab_size, hidden_size=32, num_layers=2,
                              num_heads=4, num_kv_heads=2, head_dim=12, intermediate_size=64,
                              max_len=96, rope_theta=500.0, tie_word_embeddings=False)
  assert config.data.vocabulary == folder
  tasks, data, state, model, _ = build_step(config)
  assert model.encoder_config.decoder == dataclasses.replace(cfg, initializer_range=0.02)
  # The backbone starts at the checkpoint's weights, exactly.
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(state.params['encoder']), params)
  # Training rows are the LLM tokenizer's ids, right-padded with its pad id (eos: it has no
  # padding token).
  table = data.eval['sentiment']['validation']
  row = np.asarray(table['input_ids'][0])
  real = int(np.asarray(table['attention_mask'][0]).sum())
  ids = row[:real].tolist()
  assert tokenizer.decode(ids) and ids == tokenizer.encode(tokenizer.decode(ids))
  assert np.all(row[real:] == tokenizer.pad_id) and tokenizer.pad_id == tokenizer.eos_id


def test_a_checkpoint_that_does_not_fit_is_refused_naming_its_fields(smoke_config, llm):
  folder, cfg, _, _ = llm
  with pytest.raises(CheckpointError, match=r'tiny_llm: the checkpoint does not fit the model: '
                     r'hidden_size 32 \(the model: 64\); head_dim 12 \(the model: 16\)\.'):
    llama_checkpoint.load_decoder(folder, dataclasses.replace(cfg, hidden_size=64, head_dim=16))
  config = config_lib.resolved(_run_config(smoke_config, folder))
  config.model.num_layers = 3  # a run's config.json edited by hand
  with pytest.raises(ConfigError, match=r"config.model.pretrained: its checkpoint fixes "
                     r"\['model.num_layers'\]"):
    config_lib.validate(config)
  config = _run_config(smoke_config, os.path.join(folder, 'config.json'))
  with pytest.raises(ConfigError, match=r'config.model.pretrained: .*config.json: not a '
                     r'readable GGUF file'):
    config_lib.resolved(config)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, llm, data_dir):
  """The workdir of a 20-step multi-task run from the tiny LLM (sentiment and pos heads)."""
  from experiments.configs import default
  config = _run_config(default.get_config('smoke'), llm[0])
  config.data.data_dir = data_dir
  config.num_steps, config.checkpoint.every = 20, 20
  config.optimizer.learning_rate, config.optimizer.warmup_steps = 1e-2, 0
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  main_job.train_and_evaluate(config, workdir)
  return workdir


def _greedy_by_whole_forwards(cfg, params, prompt, steps):
  """Greedy continuation by re-running the whole sequence at each token (no KV cache)."""
  tokens = list(prompt)
  for _ in range(steps):
    x = jnp.asarray([tokens])
    positions = jnp.arange(len(tokens))[None]
    out = Decoder(cfg).apply({'params': params}, x, positions,
                             decoder_lib.segment_mask(jnp.ones_like(x), positions))
    logits = Decoder(cfg).apply({'params': params}, out.hidden, method=Decoder.logits)
    tokens.append(int(jnp.argmax(logits[0, -1])))
  return tokens[len(prompt):]


@pytest.mark.integration
def test_a_trained_run_generates_and_exports_its_decoder(trained, llm, tmp_path):
  folder, cfg, start, tokenizer = llm
  run = export.run_decoder(trained)
  assert run.cfg == dataclasses.replace(cfg, initializer_range=0.02)
  moved = [not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(run.params),
                                                    jax.tree.leaves(start))]
  assert all(moved)  # 20 steps of AdamW move every tensor of the decoder
  # Export: transformers' layout of exactly these weights, and the run's tokenizer.
  out = export.export(trained, str(tmp_path / 'hf'))
  cfg_back, params_back = llama_checkpoint.read_hf(out)
  assert cfg_back == run.cfg
  jax.tree.map(np.testing.assert_array_equal, params_back, run.params)
  exported = llm_tokenizer.from_folder(out)
  assert exported.chat_template == tokenizer.chat_template
  text = 'hello world, the film was great'
  assert exported.encode(text) == tokenizer.encode(text)
  with open(os.path.join(out, 'config.json')) as f:
    assert json.load(f)['eos_token_id'] == tokenizer.eos_id
  # Generation with the cache from the run equals greedy whole forwards of the export.
  prompt = tokenizer.encode(text)
  generator = Generator(Decoder(run.cfg), run.params, frozenset(), tokenizer.pad_id)
  tokens = generator.generate([prompt], 6, GREEDY, jax.random.key(0))[0]
  assert tokens == _greedy_by_whole_forwards(cfg_back, params_back, prompt, 6)


def test_runs_that_hold_no_text_decoder_are_refused(smoke_config, tmp_path):
  """An encoder run, and a decoder run with a learnt WordPiece vocabulary: one-line errors,
  read from config.json before any data is loaded."""
  def workdir(name, config):
    path = tmp_path / name
    path.mkdir()
    (path / 'config.json').write_text(config.to_json())
    return str(path)

  encoder = workdir('encoder', smoke_config)
  with pytest.raises(ValueError, match=r"encoder: the run trained an encoder \(config.model."
                     r"backbone 'encoder'\); only a decoder writes text\."):
    export.run_decoder(encoder)
  smoke_config.model.backbone = 'decoder'
  with pytest.raises(ValueError, match=r'wordpiece: the run learnt a WordPiece vocabulary'):
    export.run_decoder(workdir('wordpiece', smoke_config))
  taken = tmp_path / 'taken'
  taken.mkdir()
  (taken / 'x').write_text('kept')
  with pytest.raises(ValueError, match='taken: exists and is not an empty folder'):
    export.export(encoder, str(taken))
  assert (taken / 'x').read_text() == 'kept'


@pytest.mark.slow
def test_the_command_line_answers_from_a_run_s_workdir(trained, llm):
  """`python -m mtl_jax.generate --workdir` streams what the run's decoder generates."""
  _, _, _, tokenizer = llm
  prompt = 'the film was great'
  run = export.run_decoder(trained)
  generator = Generator(Decoder(run.cfg), run.params, tokenizer.stop_ids, tokenizer.pad_id)
  tokens = generator.generate([tokenizer.encode(prompt)], 5, GREEDY, jax.random.key(0))[0]
  expected = tokenizer.decode(tokens, skip_special_tokens=True)
  assert expected.strip()
  env = {**os.environ, 'PYTHONPATH': ROOT}
  result = subprocess.run(
      [sys.executable, '-m', 'mtl_jax.generate', '--workdir', trained, '--raw', '--prompt',
       prompt, '--max_new_tokens', '5'], capture_output=True, text=True, env=env, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  assert result.stdout == expected + '\n'
  refused = subprocess.run(
      [sys.executable, '-m', 'mtl_jax.jobs.export', trained, trained], capture_output=True,
      text=True, env=env, timeout=300)
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      f'FATAL {trained}: exists and is not an empty folder; not overwritten.']


def test_smollm2_fixes_the_decoder_s_shape_and_tokenizer(smoke_config):
  """The name 'smollm2' resolves to the GGUF file, whose metadata fixes the shape (the model
  card's: 30 layers, 576 wide, 9 query and 3 KV heads of 64, FFN 1536, 49,152 tokens, tied)."""
  smoke_config.model.backbone, smoke_config.model.pretrained = 'decoder', 'smollm2'
  config = config_lib.resolved(smoke_config)
  path = llama_checkpoint.smollm2_gguf()
  assert config.model.pretrained == config.data.vocabulary == path
  assert {f: config.model[f] for f in ('num_layers', 'hidden_size', 'num_heads', 'num_kv_heads',
                                       'head_dim', 'intermediate_size', 'vocab_size',
                                       'tie_word_embeddings')} == dict(
      num_layers=30, hidden_size=576, num_heads=9, num_kv_heads=3, head_dim=64,
      intermediate_size=1536, vocab_size=49152, tie_word_embeddings=True)
