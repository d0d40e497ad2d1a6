"""The frozen description of one task: what it reads, what it predicts, how it is scored."""

import dataclasses
import enum


class TaskKind(enum.Enum):
  CLASSIFICATION = 'classification'  # one label per input (single sentence or pair)
  REGRESSION = 'regression'  # one real value per input (STS-B)
  TAGGING = 'tagging'  # one label per word (POS, chunks, NER, slots)
  MULTIPLE_CHOICE = 'multiple_choice'  # which of num_labels candidate inputs is right (COPA)
  TEXT = 'text'  # tokens to write: a text-to-text task, learnt through a decoder's LM head


LOSS_BY_KIND = {
    TaskKind.CLASSIFICATION: 'cross_entropy',
    TaskKind.REGRESSION: 'mse',
    TaskKind.TAGGING: 'cross_entropy',
    TaskKind.MULTIPLE_CHOICE: 'cross_entropy',  # over the choices' scores
    TaskKind.TEXT: 'nll',  # the model's output is already each target token's NLL
}


@dataclasses.dataclass(frozen=True)
class Task:
  """One task. Adding a task to the codebase means registering one of these.

  Attributes:
    name: unique name, used as the key of its labels, head and metrics.
    kind: what the head predicts.
    num_labels: classes (or tags); 1 for regression; the number of choices for multiple
      choice; 0 for a text task (what it writes is open).
    input_fields: the example fields fed to the encoder, one or two (a pair); for multiple
      choice, the fields that make up each choice's input (its data source builds them).
    label_field: the example field that holds this task's label.
    metrics: metric names (see mtl_jax.metrics), the first is primary.
    source: the data source that yields this task's examples ('builtin', 'glue/sst2', ...).
    depth: encoder layer (1..L) whose hidden states feed the head; -1 is the last layer.
    label_names: names of the classes, for reports.
    target_scale: a regression task's (mean, std) of its training targets, or None. Its head
      then predicts the standardised target (y - mean) / std, so the loss (MSE on that
      scale) starts near 1 whatever the targets' units, and its predictions are
      mean + std * output. Set from the data (mtl_jax.data.pipeline.scaled_tasks).
  """
  name: str
  kind: TaskKind
  num_labels: int
  input_fields: tuple[str, ...]
  label_field: str
  metrics: tuple[str, ...]
  source: str
  depth: int = -1
  label_names: tuple[str, ...] = ()
  target_scale: tuple[float, float] | None = None

  def __post_init__(self):
    if not self.name.isidentifier():
      raise ValueError(f'Task name {self.name!r} must be a Python identifier.')
    if len(self.input_fields) not in (1, 2):
      raise ValueError(f'Task {self.name!r}: input_fields must hold 1 or 2 fields, '
                       f'got {self.input_fields}.')
    if self.kind is TaskKind.REGRESSION and self.num_labels != 1:
      raise ValueError(f'Task {self.name!r}: a regression task has num_labels=1.')
    if self.kind is TaskKind.TEXT and self.num_labels != 0:
      raise ValueError(f'Task {self.name!r}: a text task has num_labels=0.')
    if self.kind not in (TaskKind.REGRESSION, TaskKind.TEXT) and self.num_labels < 2:
      raise ValueError(f'Task {self.name!r}: needs num_labels >= 2, got {self.num_labels}.')
    if self.target_scale is not None and (self.kind is not TaskKind.REGRESSION
                                          or not self.target_scale[1] > 0):
      raise ValueError(f'Task {self.name!r}: target_scale is a regression task\'s (mean, '
                       f'std > 0), got {self.target_scale}.')
    if not self.metrics:
      raise ValueError(f'Task {self.name!r}: give at least one metric.')
    if self.depth == 0 or self.depth < -1:
      raise ValueError(f'Task {self.name!r}: depth is a layer 1..L or -1 (last), '
                       f'got {self.depth}.')

  @property
  def loss(self) -> str:
    return LOSS_BY_KIND[self.kind]

  @property
  def num_outputs(self) -> int:
    """Outputs of the task's head per input: one score per choice for multiple choice."""
    return 1 if self.kind is TaskKind.MULTIPLE_CHOICE else self.num_labels

  @property
  def primary_metric(self) -> str:
    return self.metrics[0]

  @property
  def is_pair(self) -> bool:
    return len(self.input_fields) == 2


def num_choices(tasks) -> int:
  """Candidate inputs per table row: the most choices of any multiple-choice task, else 1.

  With more than one, every row holds that many inputs (n, C, S): a multiple-choice example
  fills them all, any other example fills the first and leaves the rest empty.
  """
  return max((t.num_labels for t in tasks if t.kind is TaskKind.MULTIPLE_CHOICE), default=1)
