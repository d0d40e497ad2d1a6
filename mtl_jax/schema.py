"""The config schema: every field of an experiment config, once, with its type, its default
and a one-line description (docs/config.md renders it). experiments/configs hold variants
of `defaults()`; mtl_jax.config validates a config against these types.
"""

import difflib
import typing
from collections.abc import Iterator
from typing import NamedTuple

import ml_collections

from mtl_jax.tasks import builtin


class Field(NamedTuple):
  path: str  # dotted, e.g. 'model.hidden_size'
  type: object  # int, float, str, bool, dict (free-form keys), tuple or tuple[T, ...]
  default: object
  help: str


FIELDS = (
    Field('seed', int, 0, 'seed of parameter initialisation, dropout and batch sampling'),
    Field('mode', str, 'both',
          "'multi', 'single' (each task alone), or 'both' (STL then MTL, and Δm%)"),
    Field('reference', str, '',
          "a JSON file of the config's documented 3-seed results (mtl_jax.report.reference); "
          "'' = none"),
    Field('tasks', tuple[str, ...], tuple(t.name for t in builtin.TASKS),
          "the run's tasks, by registered name or data.local name"),
    Field('task_weights', tuple[float, ...], (),
          "static λ_i, one per task (weighting.name='static'); empty = all 1"),
    Field('task_depths', tuple[int, ...], (),
          "backbone layer each task is supervised at, -1 = last; empty = spec's"),

    Field('weighting.name', str, 'static', 'a module of mtl_jax/weighting/ (docs/weighting.md)'),
    Field('weighting.mode', str, 'params',
          "per-task gradients w.r.t. shared 'params' or 'representation'"),
    Field('weighting.diagnostics', bool, False,
          'log per-task gradient norms and their cosine matrix'),
    Field('weighting.args', dict, {}, "the method's keyword arguments"),

    Field('data.data_dir', str, '', "where TFDS data and vocabularies live; '' = ~/.cache/mtl_jax"),
    Field('data.seed', int, 0, 'built-in suite: generation seed (train/validation/test differ)'),
    Field('data.train_size', int, 2000, 'built-in suite: examples per task in the train split'),
    Field('data.eval_size', int, 500,
          'built-in suite: examples per task in the validation and test splits'),
    Field('data.eval_splits', tuple[str, ...], ('validation',),
          "built-in suite: the splits each task is scored on, the first primary ('validation', "
          "'test')"),
    Field('data.relatedness', float, 0.5,
          'built-in suite: how much the `conflict` task shares with sentiment, in [-1, 1]'),
    Field('data.suite_version', int, 1,
          'built-in suite: generator version; 2 adds homographs (docs/builtin_suite.md)'),
    Field('data.vocab_size', int, 800, 'size of a learnt WordPiece vocabulary'),
    Field('data.vocabulary', str, '',
          "'' learns a WordPiece vocabulary; or the folder of a pretrained tokenizer "
          "(tokenizer.json or vocab.txt), or for the decoder an LLM's GGUF file"),
    Field('data.seq_len', int, 48, 'tokens per input row'),
    Field('data.download', bool, False, 'TFDS may download and prepare a missing dataset'),
    Field('data.local', dict, {},
          'tasks read from local TSV/CSV/JSONL files, by task name (docs/datasets.md)'),
    Field('data.bad_rows', str, 'error',
          "a malformed local row: 'error' (file:line) or 'skip' (counted)"),
    Field('data.label_fraction', dict, {},
          "task -> fraction of its training rows that keep their labels, e.g. {'conflict': "
          '0.05}; empty = all'),
    Field('data.standardize_targets', bool, True,
          'regression heads predict targets standardised by their training mean and std'),

    Field('sampling.strategy', str, 'proportional',
          'how a batch row picks its dataset: one of mtl_jax.data.mixture.STRATEGIES'),
    Field('sampling.temperature', float, 2.0, "τ of 'temperature' sampling: p_i ∝ n_i^(1/τ)"),
    Field('sampling.cap', int, 0,
          "n_i counts at most this many examples (seqio's mixing_rate_num_examples); 0 = no cap"),
    Field('sampling.schedule', tuple, (),
          'text runs: ((step, (rate per task, ...)), ...) waypoints; the rates move linearly '
          'between them and replace the strategy\'s; empty = fixed rates'),

    Field('text.enabled', bool, False,
          "every task is text-to-text, learnt by the decoder's LM head in instruction templates "
          '(docs/llm.md)'),
    Field('text.held_out', tuple[str, ...], (),
          'tasks only scored, zero-shot, in every fit: never trained (same names as tasks)'),
    Field('text.clusters', dict, {},
          'cluster -> held-out tasks: eval.json reports each cluster\'s gain (Δ%) over the '
          'base model, as Δm% over its tasks'),
    Field('text.examples_per_step', int, 64,
          'examples drawn per step and packed into batch_size rows of data.seq_len tokens; '
          'what does not fit is dropped and counted'),
    Field('text.train_on_prompt', bool, False, 'learn the prompt tokens too, not only the reply'),
    Field('text.loss_mean', str, 'tokens',
          "a task's loss: the mean over its target 'tokens' in the batch, or over its "
          "'examples'"),
    Field('text.templates', dict, {},
          "task -> [[prompt, completion], ...]: str.format templates replacing its kind's "
          '(data/instructions.py)'),
    Field('text.jsonl', dict, {},
          "'train' and 'validation' -> JSONL files of {task, prompt, completion} or {task, "
          'messages} lines'),
    Field('text.eval_examples', int, 64,
          'validation examples each task is scored on (windows of text.general)'),
    Field('text.general', str, '',
          'a UTF-8 text file no task trains on, scored in every fit (forgetting); '
          "'' = none"),
    Field('text.max_new_tokens', int, 0,
          'greedy reply length for answer_f1 and answer_exact_match of tasks without options; '
          '0 = no generation'),

    Field('model.backbone', str, 'encoder',
          "'encoder' (BERT layout) or 'decoder' (Llama layout; heads read the last real token)"),
    Field('model.vocab_size', int, 0, "0 = the tokenizer's; larger pads the embedding table"),
    Field('model.hidden_size', int, 128, 'width of the backbone'),
    Field('model.num_layers', int, 2, 'backbone layers'),
    Field('model.num_heads', int, 2, 'attention (query) heads per layer'),
    Field('model.intermediate_size', int, 512, "width of each layer's feed-forward block"),
    Field('model.max_len', int, 64,
          "positions the encoder embeds, the decoder's max_position_embeddings (at least "
          'data.seq_len)'),
    Field('model.dropout_rate', float, 0.1, "encoder: dropout besides attention's"),
    Field('model.attention_dropout_rate', float, 0.1, 'encoder: dropout on the attention weights'),
    Field('model.head_dropout_rate', float, 0.1, "dropout on a task head's input"),
    Field('model.layer_norm_eps', float, 1e-12, "encoder: LayerNorm's epsilon"),
    Field('model.pooling', str, 'mean',
          "encoder: a sentence task's feature, the 'mean' of the last layer's token states, "
          "or 'cls'"),
    Field('model.pooler', bool, False,
          "encoder: tanh(dense(sentence feature)), as BERT's classifier input"),
    Field('model.pair_features', bool, True,
          "encoder: a pair task reads [u, v, |u - v|, u * v] of its two segments' mean states "
          '(InferSent)'),
    Field('model.pair_head_hidden', int, 512,
          "encoder: ReLU units of the pair head's hidden layer (InferSent's); 0 = linear"),
    Field('model.num_kv_heads', int, 0,
          'decoder: key/value heads (grouped-query attention); 0 = num_heads'),
    Field('model.head_dim', int, 0, 'decoder: width of an attention head; 0 = hidden_size / '
          'num_heads'),
    Field('model.rms_norm_eps', float, 1e-5, "decoder: RMSNorm's epsilon"),
    Field('model.rope_theta', float, 10000.0,
          "decoder: base of the rotary embeddings' frequencies"),
    Field('model.rope_scaling', dict, {},
          "decoder: Hugging Face's rope_scaling (rope_type linear, dynamic, llama3 or yarn, and "
          'its keys); empty = none'),
    Field('model.tie_word_embeddings', bool, True,
          'decoder: the output embedding is the input one'),
    Field('model.attention_bias', bool, False, 'decoder: q/k/v projections have biases (Qwen2)'),
    Field('model.qk_norm', bool, False, 'decoder: RMSNorm on each query and key head (Qwen3)'),
    Field('model.sliding_window', int, 0,
          'decoder: a token attends to at most this many latest tokens (Mistral); 0 = all'),
    Field('model.dtype', str, 'float32',
          "compute dtype: 'bfloat16' on accelerators (params stay float32)"),
    Field('model.remat', str, 'none',
          "per-layer rematerialisation: 'full' or 'dots' (encoder.REMAT)"),
    Field('model.pretrained', str, '',
          'a checkpoint to start the backbone from, which fixes its shape fields: for the '
          'encoder a Hugging Face BERT/RoBERTa folder (docs/pretrained.md), for the decoder a '
          "GGUF file, a Hugging Face folder or 'smollm2' (docs/llm.md)"),
    Field('model.architecture', str, 'hard',
          'a key of mtl_jax.models.architectures.ARCHITECTURES'),
    Field('model.args', dict, {}, "the architecture's own fields (docs/sharing.md)"),

    Field('adversary.enabled', bool, False,
          'a task discriminator (adversarial MTL): the objective gets -λ_adv L_adv'),
    Field('adversary.weight', float, 0.05, "λ_adv (its final value under the 'ganin' schedule)"),
    Field('adversary.loss', str, 'reverse',
          "'reverse', or 'entropy': push the discriminator toward uniform"),
    Field('adversary.optimization', str, 'reversal',
          "gradient reversal (one pass), or 'alternating'"),
    Field('adversary.schedule', str, 'constant',
          "or 'ganin': 2 / (1 + exp(-gamma p)) - 1 ramp"),
    Field('adversary.gamma', float, 10.0, "steepness of the 'ganin' ramp"),
    Field('adversary.hidden', int, 0, 'discriminator hidden width; 0 = linear'),
    Field('adversary.learning_rate', float, 1e-3, "the discriminator's own Adam"),

    Field('optimizer.learning_rate', float, 1e-3, "AdamW's peak learning rate"),
    Field('optimizer.schedule', str, 'linear',
          "warmup, then linear decay to 0; or 'cosine', 'constant'"),
    Field('optimizer.warmup_steps', int, 60, 'steps of linear warmup'),
    Field('optimizer.weight_decay', float, 0.01, "AdamW's weight decay"),
    Field('optimizer.clip_norm', float, 1.0, 'global gradient-norm clipping; 0 = none'),
    Field('optimizer.b1', float, 0.9, "Adam's β1"),
    Field('optimizer.b2', float, 0.999, "Adam's β2"),
    Field('optimizer.eps', float, 1e-6, "Adam's ε"),

    Field('finetune.num_steps', int, 0,
          "MT-DNN's second stage: steps of each task alone from the MTL model; 0 = off"),
    Field('finetune.learning_rate', float, 0.0, '0 = optimizer.learning_rate'),
    Field('finetune.warmup_steps', int, 0, "the second stage's warmup steps"),

    Field('parallelism', str, 'mesh',
          "jit over config.mesh, or 'pmap': replicated, batch split per device"),
    Field('mesh.data', int, -1,
          'data-parallel devices; -1 = the devices the other axes leave (docs/scaling.md)'),
    Field('mesh.fsdp', int, 1, 'parameters and optimizer state split over these devices (ZeRO-3)'),
    Field('mesh.tensor', int, 1, 'attention heads and FFN units split over these devices'),
    Field('mesh.devices', int, 0,
          "the mesh spans this process's first N devices; 0 = every device (one process only)"),
    Field('mesh.rules', tuple, (),
          '(logical axis, mesh axes) pairs before parallel.mesh.AXIS_RULES'),

    Field('distributed.initialize', bool, False, 'call jax.distributed.initialize first'),
    Field('distributed.coordinator_address', str, '',
          "'host:port' of process 0; '' = found by JAX"),
    Field('distributed.num_processes', int, 0, '0 = found by JAX'),
    Field('distributed.process_id', int, -1, '-1 = found by JAX'),
    Field('distributed.timeout_seconds', int, 300, 'how long to wait for the other processes'),

    Field('checkpoint.every', int, 200,
          'save every this many steps and at the end; 0 = no checkpoints'),
    Field('checkpoint.keep', int, 2, 'the latest this many are kept (0 = all)'),
    Field('checkpoint.best_metric', str, '',
          "e.g. 'sentiment/accuracy': evaluate at each save and keep the best too"),
    Field('checkpoint.keep_best', int, 1, 'the best this many by best_metric are kept'),

    Field('faults.nonfinite', str, 'skip',
          "a step with a NaN/Inf loss or gradient: 'skip' it (counted) or 'stop' the run"),
    Field('faults.overwrite_workdir', bool, False,
          'replace the run of another config in the workdir instead of refusing it'),

    Field('batch_size', int, 32, 'examples per training step, over all devices'),
    Field('micro_batches', int, 1,
          'gradient accumulation: the batch runs as this many equal slices'),
    Field('num_steps', int, 600, 'training steps of each fit'),
    Field('log_every', int, 50, 'steps between metrics.jsonl records'),
    Field('eval_batch_size', int, 256, 'examples per evaluation batch'),

    Field('logging.tensorboard', bool, False,
          'also TensorBoard event files in workdir/tensorboard/'),
    Field('logging.progress', bool, True,
          'a progress bar, on a terminal only (MTL_JAX_PROGRESS=0: none)'),
    Field('logging.eval_every', int, 100,
          'evaluate every this many steps into eval_curve.jsonl; 0 = at the end'),
    Field('logging.representations', int, 64,
          'validation rows per task whose features are saved; 0 = off'),
)
BY_PATH = {f.path: f for f in FIELDS}


def defaults() -> ml_collections.ConfigDict:
  """The default config: every field of FIELDS at its default, a dict field empty."""
  config = ml_collections.ConfigDict()
  for field in FIELDS:
    *groups, leaf = field.path.split('.')
    node = config
    for group in groups:
      if group not in node:
        node[group] = ml_collections.ConfigDict()
      node = node[group]
    node[leaf] = ml_collections.ConfigDict(field.default) if field.type is dict else field.default
  return config


_ACCEPTS = {float: (int, float), dict: (dict, ml_collections.ConfigDict)}


def is_a(value, kind) -> bool:
  """Whether `value` fits a field of type `kind`: a bool is no int, a float field takes an
  int, a tuple field a list (as a config file may write it), a dict field a ConfigDict."""
  if typing.get_origin(kind) is tuple or kind is tuple:
    item = (typing.get_args(kind) or (object,))[0]
    return isinstance(value, (tuple, list)) and all(is_a(v, item) for v in value)
  if isinstance(value, bool):
    return kind is bool
  return isinstance(value, _ACCEPTS.get(kind, kind))


_NAMES = {int: 'an integer', float: 'a number', str: 'a string', bool: 'True or False',
          dict: 'a dict', tuple: 'a tuple'}


def type_phrase(kind) -> str:
  """A field's type as an error message names it: 'an integer', 'a tuple of str'."""
  args = typing.get_args(kind)
  return f'a tuple of {args[0].__name__}' if args else _NAMES[kind]


def held(config: ml_collections.ConfigDict) -> Iterator[tuple[Field, object]]:
  """(field, value) for each schema field `config` holds (a run stored before a field
  existed lacks it)."""
  for field in FIELDS:
    node = config
    for part in field.path.split('.'):
      if part not in node:
        break
      node = node[part]
    else:
      yield field, node


def _paths(config: ml_collections.ConfigDict, prefix: str = '') -> Iterator[str]:
  """The fields `config` sets; a dict field (free-form keys) is one field."""
  for key, value in config.items():
    path = prefix + key
    if isinstance(value, ml_collections.ConfigDict) and path not in BY_PATH:
      yield from _paths(value, path + '.')
    else:
      yield path


def unknown_fields(config: ml_collections.ConfigDict) -> list[str]:
  """The fields of `config` the schema lacks, each with the closest known field when there
  is one: a typo in a config file (`c.num_step = 5`) would otherwise add a field that
  nothing reads."""
  unknown = []
  for path in _paths(config):
    if path not in BY_PATH:
      close = difflib.get_close_matches(path, list(BY_PATH), n=1)
      unknown.append(path + (f' (did you mean {close[0]}?)' if close else ''))
  return unknown


def _type_name(kind) -> str:
  return repr(kind) if typing.get_args(kind) else kind.__name__


def _cell(text: str) -> str:
  return text.replace('|', '\\|')


def describe() -> str:
  """The schema as a markdown table, one row per field (docs/config.md)."""
  rows = [f'| `{f.path}` | `{_type_name(f.type)}` | `{_cell(repr(f.default))}` | {_cell(f.help)} |'
          for f in FIELDS]
  return '\n'.join(['| field | type | default | description |', '|---|---|---|---|', *rows]) + '\n'
