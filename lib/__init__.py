"""The kit's code, in four parts over a few shared modules.

- shared (this folder): ``config`` (the typed config), ``errors`` (KitError), ``records`` (the run folder,
  RunSummary), ``runs`` (reading runs: local or W&B), ``sources`` (what SOURCE is), ``selection`` (which run is
  best), ``files`` (atomic writes, locks), ``images``, ``cells``;
- ``train``: one run;   ``sweep``: many runs (W&B or Optuna);   ``report``: who won;   ``ship``: the winner out.

Dependencies point one way: shared <- train <- sweep, and shared <- report <- ship (ship may use train).
tests/test_layout.py checks it, lazy imports included.
"""
