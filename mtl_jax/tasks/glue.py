"""GLUE, SuperGLUE and MultiNLI tasks, read from TFDS (mtl_jax.data.tfds_source).

Names: 'glue_<config>', 'superglue_<config>' and 'multi_nli', so SuperGLUE's RTE
('superglue_rte') and GLUE's ('glue_rte') never clash. Each task's fields, label names
and splits are those of the TFDS builders (tensorflow_datasets/text/glue.py, super_glue.py,
multi_nli.py); label ids follow the builders' ClassLabel order.

Metrics, primary first, as the benchmarks score them (Wang et al. 2019, GLUE, Table 1;
Wang et al. 2019, SuperGLUE, Table 1):
  CoLA: Matthews correlation.  MRPC, QQP: F1 of the positive class, then accuracy.
  STS-B: Pearson, then Spearman.  AX: R3, the multiclass Matthews correlation.
  CB: accuracy and macro F1.  MultiRC: F1a, the binary F1 over all answer options, then EM,
  the fraction of questions whose answer options are all predicted right (the question of
  an option is its record's idx {paragraph, question}; TfdsData.group_by).
  Every other task (COPA, a multiple-choice task, included): accuracy.
Not registered: ReCoRD and WSC need span heads.
"""

import dataclasses

from mtl_jax.tasks.registry import register
from mtl_jax.tasks.spec import Task, TaskKind


@dataclasses.dataclass(frozen=True)
class TfdsData:
  """Where a task's examples live in TFDS.

  Attributes:
    train: the training split, or None (an evaluation-only task).
    eval: the labelled validation splits, primary first.
    test: the test splits; their labels are -1 (withheld), so they are never scored.
    templates: str.format templates over a record's fields, one per encoder input; empty
      means the task's input_fields as they are.
    choices: for a multiple-choice task, the templates of each candidate's input.
    group_by: the fields of a record's idx that name the group its row is scored in (rows
      of one group are right together or not at all: MultiRC's exact match); empty: none.
  """
  train: str | None
  eval: tuple[str, ...]
  test: tuple[str, ...]
  templates: tuple[str, ...] = ()
  choices: tuple[tuple[str, ...], ...] = ()
  group_by: tuple[str, ...] = ()


TFDS: dict[str, TfdsData] = {}  # task name -> its TFDS splits

_STANDARD = TfdsData('train', ('validation',), ('test',))
_MNLI = TfdsData('train', ('validation_matched', 'validation_mismatched'),
                 ('test_matched', 'test_mismatched'))
_NLI3 = ('entailment', 'neutral', 'contradiction')
_NLI2 = ('entailment', 'not_entailment')
_BOOL = ('False', 'True')


def _add(name: str, source: str, inputs: tuple[str, ...], labels: tuple[str, ...],
         metrics: tuple[str, ...], data: TfdsData = _STANDARD) -> Task:
  """Registers one TFDS task; no label names means regression, choice templates multiple
  choice."""
  kind = (TaskKind.MULTIPLE_CHOICE if data.choices else
          TaskKind.CLASSIFICATION if labels else TaskKind.REGRESSION)
  task = register(Task(name, kind, len(labels) or 1, inputs, 'label', metrics, source,
                       label_names=labels))
  TFDS[name] = data
  return task


_ACC = ('accuracy',)
_F1_ACC = ('f1', 'accuracy')
GLUE = (
    _add('glue_cola', 'glue/cola', ('sentence',), ('unacceptable', 'acceptable'),
         ('matthews',)),
    _add('glue_sst2', 'glue/sst2', ('sentence',), ('negative', 'positive'), _ACC),
    _add('glue_mrpc', 'glue/mrpc', ('sentence1', 'sentence2'),
         ('not_equivalent', 'equivalent'), _F1_ACC),
    _add('glue_qqp', 'glue/qqp', ('question1', 'question2'), ('not_duplicate', 'duplicate'),
         _F1_ACC),
    _add('glue_stsb', 'glue/stsb', ('sentence1', 'sentence2'), (), ('pearson', 'spearman')),
    _add('glue_mnli', 'glue/mnli', ('premise', 'hypothesis'), _NLI3, _ACC, _MNLI),
    _add('glue_qnli', 'glue/qnli', ('question', 'sentence'), _NLI2, _ACC),
    _add('glue_rte', 'glue/rte', ('sentence1', 'sentence2'), _NLI2, _ACC),
    _add('glue_wnli', 'glue/wnli', ('sentence1', 'sentence2'), ('not_entailment', 'entailment'),
         _ACC),
    # The diagnostic set: an unlabelled test split with MNLI's classes, for predictions only.
    _add('glue_ax', 'glue/ax', ('premise', 'hypothesis'), _NLI3, ('matthews',),
         TfdsData(None, (), ('test',))),
)

SUPERGLUE = (
    _add('superglue_boolq', 'super_glue/boolq', ('question', 'passage'), _BOOL, _ACC),
    # Each alternative is scored with the premise (Roemmele et al. 2011); the question is
    # 'cause' or 'effect'.
    _add('superglue_copa', 'super_glue/copa', ('premise', 'question'), ('choice1', 'choice2'),
         _ACC, dataclasses.replace(_STANDARD, choices=(
             ('{premise}', 'What was the {question}? {choice1}'),
             ('{premise}', 'What was the {question}? {choice2}')))),
    _add('superglue_cb', 'super_glue/cb', ('premise', 'hypothesis'),
         ('entailment', 'contradiction', 'neutral'), ('accuracy', 'macro_f1')),
    _add('superglue_rte', 'super_glue/rte', ('premise', 'hypothesis'), _NLI2, _ACC),
    # The target word leads the first segment: a sentence-level head sees which word to judge.
    _add('superglue_wic', 'super_glue/wic', ('sentence1', 'sentence2'), _BOOL, _ACC,
         dataclasses.replace(_STANDARD, templates=('{word}: {sentence1}', '{sentence2}'))),
    # One example per (paragraph, question, answer option): is the option correct?
    _add('superglue_multirc', 'super_glue/multirc', ('paragraph', 'question'), _BOOL,
         ('f1', 'exact_match'),
         dataclasses.replace(_STANDARD, templates=('{paragraph}', '{question} {answer}'),
                             group_by=('paragraph', 'question'))),
)

MULTI_NLI = _add('multi_nli', 'multi_nli', ('premise', 'hypothesis'), _NLI3, _ACC,
                 TfdsData('train', ('validation_matched', 'validation_mismatched'), ()))
