"""Many runs: a W&B sweep YAML read with W&B's own semantics (spec), run on W&B's server with one agent
per GPU (cloud), or offline with Optuna on one machine or many sharing a database (local, study_db,
artifacts), watched live (dashboard) or from a Kaggle notebook (kaggle). Every trial is the real
finetune_resnet.py in a subprocess, started with the argv and parameters file W&B's agent would give it.

May import the shared modules of lib/ and lib.train (to check a model or weights before a study starts);
never lib.report or lib.ship: the entrypoint composes a study's runs with the report and the export.
"""
