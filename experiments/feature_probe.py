"""What the shared sentence feature of a finished run knows: linear probes, before and after.

  python experiments/feature_probe.py WORKDIR [WORKDIR ...]

For the MTL fit in each WORKDIR (its config.json and last checkpoint), encodes every
sentence-level task's primary validation split with the initial and the trained
parameters, and prints per task: the probe's cross-validated score (sklearn, on
standardised features: logistic regression accuracy for classification, ridge R^2 for
regression, 5 folds on the validation rows), and the features' spread (mean per-dimension std, participation ratio of
the centred features' spectrum, fraction of |x| > 0.99). A task whose probe is at chance
after training has no linearly decodable trace left in the feature its head reads.
"""

import sys

import jax
import numpy as np
from sklearn.linear_model import LogisticRegression, RidgeCV
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from mtl_jax import config as config_lib
from mtl_jax.data.features import INPUT_KEYS
from mtl_jax.data.pipeline import load_task_data, scaled_tasks
from mtl_jax.jobs.submit import run_config
from mtl_jax.models.base import sentence_key
from mtl_jax.report.representations import _sentence_feature
from mtl_jax.tasks import TaskKind
from mtl_jax.train import loop
from mtl_jax.train.forward import apply_model


def spread(x: np.ndarray) -> dict:
  s = np.linalg.svd(x - x.mean(0), compute_uv=False) ** 2
  return dict(std=float(x.std(0).mean()), pr=float(s.sum() ** 2 / (s ** 2).sum()),
              saturated=float((np.abs(x) > 0.99).mean()))


def probe_score(task, x: np.ndarray, y: np.ndarray) -> float:
  """Features standardised first: a probe measures information, not scale."""
  model = (RidgeCV(alphas=np.logspace(-3, 3, 7)) if task.kind is TaskKind.REGRESSION
           else LogisticRegression(max_iter=5000, C=1.0))
  return float(cross_val_score(make_pipeline(StandardScaler(), model), x, y, cv=5).mean())


def main(workdir: str):
  config = config_lib.resolved(run_config(workdir))
  tasks = config_lib.validate(config)
  data = load_task_data(config.data, tasks)
  fit_tasks = scaled_tasks(tasks, data)
  method = config_lib.build_weighting(config)
  model, trained = loop.trained_params(config, fit_tasks, data, workdir, method)
  initial = loop.program(config, fit_tasks, data, method)[1].create().params
  key = sentence_key(model.encoder_config)
  encode = jax.jit(lambda params, inputs: _sentence_feature(
      apply_model(model, params, {}, method='encode', inputs=inputs), key))
  print(f'{workdir}: tasks {config.tasks}, weights {tuple(config.task_weights) or "equal"}')
  print(f'{"task":11s} | {"probe init":>10s} | {"probe end":>9s} | {"std init":>8s} | '
        f'{"std end":>7s} | {"PR init":>7s} | {"PR end":>6s} | sat end')
  for task in fit_tasks:
    if task.kind is TaskKind.TAGGING:
      continue
    table = next(iter(data.eval[task.name].values()))
    rows = table['label_masks'][task.name] > 0
    inputs = tuple(table[k][rows] for k in INPUT_KEYS)
    y = table['labels'][task.name][rows]
    out = {}
    for name, params in (('init', initial), ('end', trained)):
      x = np.asarray(encode(params, inputs), np.float64)
      out[name] = (probe_score(task, x, y), spread(x))
    (p0, s0), (p1, s1) = out['init'], out['end']
    print(f'{task.name:11s} | {p0:10.3f} | {p1:9.3f} | {s0["std"]:8.4f} | {s1["std"]:7.4f} | '
          f'{s0["pr"]:7.2f} | {s1["pr"]:6.2f} | {s1["saturated"]:.3f}')


if __name__ == '__main__':
  for w in sys.argv[1:]:
    main(w)
