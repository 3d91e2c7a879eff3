"""Quantization Workbench: look inside a PyTorch model while quantizing it with PT2E.

The library does all the work and never imports streamlit; the app and the CLI are views.
"""

from workbench.errors import WorkbenchError

__all__ = ["WorkbenchError"]
__version__ = "0.1.0"
