"""What the model is fed and judged on: calibration/training/evaluation data sources and the
task (prediction, loss, quality).
"""

__all__: list[str] = []
