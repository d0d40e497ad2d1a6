"""The main job: hard-sharing MTL on the built-in suite, with single-task baselines.

Variants (`--config experiments/configs/default.py:VARIANT`):
  (none)  the default: 7 tasks, STL baselines + MTL, a few minutes on a 2-core CPU.
  smoke   seconds: tiny data and model, for tests and a first look.
Any field can be overridden on the command line, e.g. `--config.num_steps=200`.
"""

import os

import ml_collections

from mtl_jax import weighting

BUILTIN_TASKS = ('pos', 'chunk', 'sentiment', 'topic', 'conflict', 'entailment', 'similarity')


def get_config(variant: str = '') -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.mode = 'both'  # 'multi', 'single' (each task alone), or 'both' (STL then MTL, and Δm%)
  # A JSON file of this config's documented 3-seed results (mtl_jax.report.reference):
  # mode 'both' marks each figure of its one seed against their spread. '' = none.
  c.reference = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             'reference', 'default.json')  # seeds 0-2 of this config
  c.tasks = BUILTIN_TASKS
  c.task_weights = ()  # static λ_i, one per task (weighting.name='static'); empty = all 1
  c.task_depths = ()  # encoder layer each task is supervised at, -1 = last; empty = spec's

  c.weighting = ml_collections.ConfigDict()
  c.weighting.name = 'static'  # a module of mtl_jax/weighting/ (docs/weighting.md)
  c.weighting.mode = 'params'  # per-task gradients w.r.t. shared 'params' or 'representation'
  c.weighting.diagnostics = False  # log per-task gradient norms and their cosine matrix
  c.weighting.args = ml_collections.ConfigDict()  # the method's keyword arguments

  c.data = ml_collections.ConfigDict()
  c.data.data_dir = ''  # where TFDS data and vocabularies live; '' = ~/.cache/mtl_jax
  c.data.seed = 0  # built-in suite: generation seed (train/validation/test differ)
  c.data.train_size = 2000  # built-in suite: examples per task and split
  c.data.eval_size = 500
  # built-in suite: the splits each task is scored on, the first primary ('validation', 'test')
  c.data.eval_splits = ('validation',)
  c.data.relatedness = 0.5  # built-in suite: how much the `conflict` task shares with sentiment
  c.data.suite_version = 1  # built-in suite: generator version; 2 adds homographs (its docs)
  c.data.vocab_size = 800  # size of a learnt WordPiece vocabulary
  # '' learns a WordPiece vocabulary (the built-in suite's own, or one from the run's training
  # text); or the folder of a pretrained tokenizer (tokenizer.json or vocab.txt).
  c.data.vocabulary = ''
  c.data.seq_len = 48
  c.data.download = False  # TFDS may download and prepare a missing dataset
  # Tasks read from local TSV/CSV/JSONL files, by task name (docs/datasets.md):
  # c.data.local.glue_cola = dict(format='tsv', paths=dict(train=..., validation=...), ...)
  c.data.local = ml_collections.ConfigDict()
  c.data.bad_rows = 'error'  # a malformed local row: 'error' (file:line) or 'skip' (counted)
  # Task -> fraction of the training rows that keep its labels (a scarce task beside tasks
  # labelled on every row; mtl_jax.data.train_rows), e.g. {'conflict': 0.05}. Empty = all.
  c.data.label_fraction = ml_collections.ConfigDict()
  # Regression heads predict targets standardised by their training mean and std (the loss
  # starts near 1 in any units; predictions and metrics stay in the targets' units).
  c.data.standardize_targets = True

  c.sampling = ml_collections.ConfigDict()
  c.sampling.strategy = 'proportional'  # or 'temperature', 'uniform'
  c.sampling.temperature = 2.0

  c.model = ml_collections.ConfigDict()
  c.model.vocab_size = 0  # 0 = the tokenizer's; larger pads the embedding table
  c.model.hidden_size = 128
  c.model.num_layers = 2
  c.model.num_heads = 2
  c.model.intermediate_size = 512
  c.model.max_len = 64
  c.model.dropout_rate = 0.1
  c.model.attention_dropout_rate = 0.1
  c.model.head_dropout_rate = 0.1
  c.model.layer_norm_eps = 1e-12
  # A sentence task's head reads the mean of the last layer's token states, without BERT's
  # tanh pooler: a from-scratch [CLS] state is nearly the same for every input at init, so
  # the sentence task that learns first takes the whole feature (docs/results.md).
  c.model.pooling = 'mean'  # or 'cls'
  c.model.pooler = False  # tanh(dense(sentence feature)), as BERT's classifier input
  # A sentence-pair task's head reads [u, v, |u - v|, u * v] of its two segments' mean token
  # states (InferSent) rather than one sentence feature of the joint input.
  c.model.pair_features = True
  # ... through one hidden ReLU layer (InferSent's classifier): whether a hypothesis's
  # modifiers are a subset of the premise's is not linear in those features (0 = linear).
  c.model.pair_head_hidden = 512
  c.model.dtype = 'float32'  # compute dtype: 'bfloat16' on accelerators (params stay float32)
  c.model.remat = 'none'  # per-layer rematerialisation: 'full' or 'dots' (encoder.REMAT)
  # A Hugging Face BERT/RoBERTa folder (config.json + model.safetensors) to start the encoder
  # from; its config.json then fixes the encoder fields above (docs/pretrained.md).
  c.model.pretrained = ''
  c.model.architecture = 'hard'  # a key of mtl_jax.models.architectures.ARCHITECTURES
  c.model.args = ml_collections.ConfigDict()  # the architecture's own fields (docs/sharing.md)

  # The task discriminator of adversarial MTL: the objective gets -λ_adv L_adv.
  c.adversary = ml_collections.ConfigDict()
  c.adversary.enabled = False
  c.adversary.weight = 0.05  # λ_adv (its final value under the 'ganin' schedule)
  c.adversary.loss = 'reverse'  # or 'entropy': push the discriminator toward uniform
  c.adversary.optimization = 'reversal'  # gradient reversal (one pass), or 'alternating'
  c.adversary.schedule = 'constant'  # or 'ganin': 2 / (1 + exp(-gamma p)) - 1 ramp
  c.adversary.gamma = 10.0
  c.adversary.hidden = 0  # discriminator hidden width; 0 = linear
  c.adversary.learning_rate = 1e-3  # the discriminator's own Adam

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 1e-3
  c.optimizer.schedule = 'linear'  # warmup, then linear decay to 0; or 'cosine', 'constant'
  c.optimizer.warmup_steps = 60
  c.optimizer.weight_decay = 0.01
  c.optimizer.clip_norm = 1.0
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999
  c.optimizer.eps = 1e-6

  # MT-DNN's second stage: after MTL, each task alone from the MTL model (0 steps = off).
  c.finetune = ml_collections.ConfigDict()
  c.finetune.num_steps = 0
  c.finetune.learning_rate = 0.0  # 0 = optimizer.learning_rate
  c.finetune.warmup_steps = 0

  c.parallelism = 'mesh'  # jit over config.mesh, or 'pmap': replicated, batch split per device
  # The device mesh (mtl_jax/parallel/mesh.py, docs/scaling.md): data x fsdp x tensor must
  # equal the device count; -1 = the devices the other axes leave. Default: data parallel.
  c.mesh = ml_collections.ConfigDict()
  c.mesh.data = -1
  c.mesh.fsdp = 1  # parameters and optimizer state split over these devices (ZeRO-3)
  c.mesh.tensor = 1  # attention heads and FFN units split over these devices
  c.mesh.rules = ()  # (logical axis, mesh axes) pairs before parallel.mesh.AXIS_RULES

  # Several processes (hosts), docs/scaling.md: every process runs the same command. Empty
  # fields are found by JAX (JAX_COORDINATOR_ADDRESS, or a TPU pod / SLURM / MPI environment).
  c.distributed = ml_collections.ConfigDict()
  c.distributed.initialize = False  # call jax.distributed.initialize first
  c.distributed.coordinator_address = ''  # 'host:port' of process 0
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  c.distributed.timeout_seconds = 300  # how long to wait for the other processes

  # Orbax checkpoints in each fit's workdir/checkpoints (docs/checkpoints.md): a run started
  # again with the same command resumes from the last good one; SIGTERM saves and stops.
  c.checkpoint = ml_collections.ConfigDict()
  c.checkpoint.every = 200  # save every this many steps and at the end; 0 = no checkpoints
  c.checkpoint.keep = 2  # the latest this many are kept (0 = all)
  c.checkpoint.best_metric = ''  # e.g. 'sentiment/accuracy': evaluate at each save and
  c.checkpoint.keep_best = 1  # also keep the best this many by it

  # Faults (docs/faults.md): a step whose loss or gradient is NaN/Inf is 'skip'ped (not
  # applied, counted in metrics.jsonl's skipped_steps) or 'stop's the run with an error.
  c.faults = ml_collections.ConfigDict()
  c.faults.nonfinite = 'skip'
  # A workdir holding a run of another config is refused (naming the fields) unless True.
  c.faults.overwrite_workdir = False

  c.batch_size = 32
  c.micro_batches = 1  # gradient accumulation: the batch runs as this many equal slices
  c.num_steps = 600
  c.log_every = 50
  c.eval_batch_size = 256

  # What a run logs besides metrics.jsonl (docs/report.md).
  c.logging = ml_collections.ConfigDict()
  c.logging.tensorboard = False  # also TensorBoard event files in workdir/tensorboard/
  c.logging.progress = True  # a progress bar, on a terminal only (MTL_JAX_PROGRESS=0: none)
  c.logging.eval_every = 100  # evaluate every this many steps into eval_curve.jsonl; 0 = at the end
  c.logging.representations = 64  # validation rows per task whose features are saved; 0 = off

  if variant == 'smoke':
    c.reference = ''  # none documented
    c.tasks = ('pos', 'sentiment', 'entailment', 'similarity')  # every head kind, 5 short runs
    c.data.train_size = 64
    c.data.eval_size = 32
    c.data.seq_len = 32
    c.model.hidden_size = 32
    c.model.intermediate_size = 64
    c.model.max_len = 32
    c.num_steps = 20
    c.log_every = 5
    c.batch_size = 16
    c.optimizer.warmup_steps = 5
    c.checkpoint.every = 10
  elif variant:
    raise ValueError(f'Unknown variant {variant!r} of default.py; known: smoke.')
  return c


def method_config(method: str, mode: str, diagnostics: bool) -> ml_collections.ConfigDict:
  """The default job, MTL only, with a weighting method. Diagnostics are free for gradient
  methods (they hold the Gram matrix) and cost N backward passes for a loss weighter."""
  c = get_config()
  c.mode = 'multi'
  c.weighting.name = method
  c.weighting.mode = mode
  c.weighting.diagnostics = diagnostics
  c.weighting.args = ml_collections.ConfigDict(weighting.default_args(method))
  return c
