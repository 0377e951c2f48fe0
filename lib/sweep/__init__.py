"""Many runs: a W&B sweep YAML read with W&B's own semantics (spec), run on W&B's server with one agent
per GPU (wandb_sweep), or offline with Optuna on one machine or many sharing a database (the ``local``
engine: options, runner, trial, storage, samplers, study, recovery, confirm, status; read from anywhere:
study_db, artifacts), watched live (dashboard) or from a Kaggle notebook (kaggle). Time budgets (budget)
and GPU discovery (gpus) serve both engines. Every trial is the real finetune_resnet.py in a subprocess,
started with the argv and parameters file W&B's agent would give it.

Inside the offline engine, imports point one way: options <- storage, samplers, study <- recovery,
confirm <- trial, status <- runner.

May import the shared modules of lib/ and lib.train (to check a model or weights before a study starts);
never lib.report or lib.ship: the entrypoint composes a study's runs with the report and the export.
"""
