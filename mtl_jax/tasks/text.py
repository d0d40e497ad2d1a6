"""The spec of a text-to-text task (TaskKind.TEXT) in a text run, and what it is scored with.

Every text task is scored by its replies' likelihood: `bits_per_byte` and `loss` (mean NLL
per target token). A task with options (a classification or multiple-choice task in its
templates) is scored first by rank classification, `acc` and `acc_norm`; one without (a
conversation, a regression or tagging task) by bits per byte, and, when the run generates,
also by the greedy reply's `answer_f1` and `answer_exact_match`.
"""

from mtl_jax.tasks.spec import Task, TaskKind

RANKED = ('acc', 'acc_norm')
LIKELIHOOD = ('bits_per_byte', 'loss')
GENERATED = ('answer_f1', 'answer_exact_match')
HAS_OPTIONS = (TaskKind.CLASSIFICATION, TaskKind.MULTIPLE_CHOICE)


def text_task(name: str, source: str, ranked: bool, generated: bool) -> Task:
  """The TaskKind.TEXT spec of task `name` (read from `source`)."""
  metrics = (RANKED + LIKELIHOOD) if ranked else LIKELIHOOD
  if generated and not ranked:
    metrics += GENERATED
  return Task(name=name, kind=TaskKind.TEXT, num_labels=0, input_fields=('prompt',),
              label_field='completion', metrics=metrics, source=source)


def as_text(task: Task, generated: bool) -> Task:
  """A registered (labelled) task as a text task: ranked over its options when it has some."""
  return text_task(task.name, task.source, task.kind in HAS_OPTIONS, generated)
