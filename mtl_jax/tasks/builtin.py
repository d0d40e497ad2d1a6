"""The built-in offline suite (mtl_jax.data.builtin_suite): seven tasks over the same sentences."""

from mtl_jax.data import builtin_suite as suite
from mtl_jax.tasks.registry import register
from mtl_jax.tasks.spec import Task, TaskKind

SOURCE = 'builtin'
EVAL_SPLITS = ('validation', 'test')  # the labelled held-out splits (config.data.eval_splits)
_SINGLE = ('words_a',)
_PAIR = ('words_a', 'words_b')

TASKS = tuple(register(t) for t in (
    Task('pos', TaskKind.TAGGING, len(suite.POS_TAGS), _SINGLE, 'pos',
         ('token_accuracy', 'token_macro_f1'), SOURCE, label_names=suite.POS_TAGS),
    Task('chunk', TaskKind.TAGGING, len(suite.CHUNK_TAGS), _SINGLE, 'chunk',
         ('chunk_f1', 'token_accuracy'), SOURCE, label_names=suite.CHUNK_TAGS),
    Task('sentiment', TaskKind.CLASSIFICATION, 2, _SINGLE, 'sentiment',
         ('accuracy', 'f1', 'matthews'), SOURCE, label_names=suite.SENTIMENT_LABELS),
    Task('topic', TaskKind.CLASSIFICATION, len(suite.TOPICS), _SINGLE, 'topic',
         ('accuracy', 'macro_f1'), SOURCE, label_names=suite.TOPICS),
    Task('conflict', TaskKind.CLASSIFICATION, 2, _SINGLE, 'conflict',
         ('accuracy', 'matthews'), SOURCE, label_names=suite.CONFLICT_LABELS),
    Task('entailment', TaskKind.CLASSIFICATION, 3, _PAIR, 'entailment',
         ('accuracy', 'macro_f1'), SOURCE, label_names=suite.ENTAILMENT_LABELS),
    Task('similarity', TaskKind.REGRESSION, 1, _PAIR, 'similarity',
         ('pearson', 'spearman', 'mse'), SOURCE),
))


def eval_splits(data_cfg) -> tuple[str, ...]:
  """config.data.eval_splits: the splits each built-in task is scored on, the first primary.
  A run's config.json from before the field existed scored validation alone."""
  return tuple(data_cfg.get('eval_splits', EVAL_SPLITS[:1]))
