"""Plots and tables of a run or a sweep (`python -m mtl_jax.report <workdir>`, docs/report.md).

Importing the package is cheap (no matplotlib): the training loop uses `representations`.
"""
