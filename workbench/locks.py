"""One process-wide lock around torch.export and the torchao passes that call it.

torch.export is not thread-safe (its pre-dispatch mode slot is process-global: two exports at
once fail with "ProxyTorchDispatchMode slot already occupied"), and Streamlit runs every
browser session in its own thread. Every export the workbench starts, directly or through
torchao's prepare/convert/train-eval switches, and every torch.export.load and
ExportedProgram.module() (both trace the graph the same way) runs under this lock.

Model computations hold it too: every forward through `pipeline.run`, each whole QAT step
and each per-node recording. CPU ops split their work (reductions included) by how many
intra-op threads are free, so a training step run while another thread computes can differ
in the last bits from the same step run alone (measured: 1.5e-8 on digits_cnn weights after
5 steps beside the pattern-cache warm-up). Under the lock a session's training, calibration
and evaluation give the same bits whatever else the server does, so the command the Export
page shows rebuilds the app's model exactly.
"""

from __future__ import annotations

import threading

EXPORT_LOCK = threading.RLock()
