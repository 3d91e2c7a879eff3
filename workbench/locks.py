"""One process-wide lock around torch.export and the torchao passes that call it.

torch.export is not thread-safe (its pre-dispatch mode slot is process-global: two exports at
once fail with "ProxyTorchDispatchMode slot already occupied"), and Streamlit runs every
browser session in its own thread. Every export the workbench starts, directly or through
torchao's prepare/convert/train-eval switches, and every torch.export.load and
ExportedProgram.module() (both trace the graph the same way) runs under this lock.
"""

from __future__ import annotations

import threading

EXPORT_LOCK = threading.RLock()
