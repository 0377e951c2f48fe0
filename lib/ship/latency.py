"""Per-image latency, measured the same way for PyTorch and ONNX Runtime."""
from __future__ import annotations

import statistics
import time

import numpy as np

LATENCY_IMAGES, LATENCY_WARMUP, LATENCY_BUDGET_S = 20, 3, 5.0

def latency_ms(fn, images: list[np.ndarray], budget_s: float = LATENCY_BUDGET_S) -> tuple[float, int]:
    """Median milliseconds for one image (batch 1) after warm-up, and how many calls were timed:
    up to ``len(images)``, fewer (at least 5) when they take longer than ``budget_s`` in all, so a
    slow model or a busy machine does not stall the export."""
    start = time.perf_counter()
    for x in images[:LATENCY_WARMUP]:
        fn(x)
    times: list[float] = []
    for x in images:
        t0 = time.perf_counter()
        fn(x)
        times.append((time.perf_counter() - t0) * 1000)
        if len(times) >= 5 and time.perf_counter() - start > budget_s:
            break
    return round(statistics.median(times), 3), len(times)
