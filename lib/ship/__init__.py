"""Shipping the winner: pick the run (select), load it (lib.train.restore), write and check the ONNX
file (onnx_model), quantize it, time it (latency), explain it (attribution), describe it (card), fetch
it from and log it back to W&B (wandb_export), and classify new images with the exported file (predict:
ONNX Runtime only, never torch).

May import the shared modules of lib/, lib.report (statistics) and lib.train (a finished run's model and
images); never lib.sweep. The names of an export folder's files are here, shared by
the modules that write and read them.
"""
ONNX_FILE, INT8_FILE, CARD_FILE, EXPORT_FILE, ATTR_DIR = (
    "model.onnx", "model.int8.onnx", "model_card.md", "export.json", "attributions")
