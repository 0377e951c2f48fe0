"""One run: the config checked against the model and the data, images decoded and cached, the strategy's
trainable set, the loop (phases, early stopping, EMA, AMP, checkpoints), test metrics and the run record,
tracked on W&B (online, offline or not at all). ``run.main`` is what finetune_resnet.py calls. Also a
finished run back from its folder (restore) and runs averaged into a new run record (soup).

May import the shared modules of lib/ only: a run knows nothing of the sweep that started it beyond the
parameters and environment W&B's agent (or the offline runner) hands it.
"""
