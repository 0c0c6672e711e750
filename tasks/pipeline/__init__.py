"""The pipeline's stages as plain functions: references in, references out.

Each Prefect task in :mod:`tasks` is a few lines that calls one function here; these run, and
are tested, in a plain Python session (no Prefect, MLflow or Dask imported at module level).
A stage's output is found by one key function per stage (``ingest_key``, ``model_key``,
``encoder_key``, ``active_model_key``, ``explore_key``), shared by the stage, its ``*_exists``
check and the flows.

- :mod:`tasks.pipeline.common`: the model directory's staging and publishing rename, atomic files,
  the scaled cached features of a split (shared by every stage that trains or predicts).
- :mod:`tasks.pipeline.data`: ingest and the scaler.
- :mod:`tasks.pipeline.encoder`: autoencoders and their latent features.
- :mod:`tasks.pipeline.models`: supervised models and their evaluation.
- :mod:`tasks.pipeline.active`: the active-learning loop's training, exploration and selection.
- :mod:`tasks.pipeline.pool`: its labels and the grown dataset.
- :mod:`tasks.pipeline.record`: the campaign's runs in MLflow and the champion.
- :mod:`tasks.pipeline.active_record`: the active loop's runs, its registered models and champion.
"""
