"""python -m mtl_jax.report <workdir> [--tsne]: writes the run's plots (PNG) into it."""

import argparse

from mtl_jax.report import plots

# Why a plot can be missing, for the message.
NEEDS = {
    'curves.png': 'metrics.jsonl with task_losses',
    'task_weights.png': 'task weights (a gradient aggregator has none)',
    'gradient_conflict.png': 'two or more tasks and config.weighting.diagnostics=True',
    'representations_pca.png': 'representations.npz (an MTL run, config.logging.representations)',
    'representations_tsne.png': 'representations.npz',
    'task_gain.png': "mode='both' (STL baselines)",
}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('workdir')
  parser.add_argument('--tsne', action='store_true', help='also a t-SNE projection (slower)')
  args = parser.parse_args(argv)
  for name, path in plots.write_plots(args.workdir, args.tsne).items():
    print(f'wrote {path}' if path else f'skipped {name}: needs {NEEDS[name]}')


if __name__ == '__main__':
  main()
