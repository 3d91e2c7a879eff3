"""The PT2E flow as immutable stages: exported -> prepared -> calibrated | trained -> converted.

- `stage`: what a stage is (`Stage`) and the four of one conversion (`Stages`).
- `steps`: the steps that make each stage from the one before (prepare, calibrate, convert)
  and calling or evaluating a stage's module.
- `training`: quantization-aware training (settings, resumable runs, checkpoints).
- `ranges`: what observers and fake quantizers record, step by step.
- `build`: the whole headless flow, stages to .pt2 and report.
- `estimate`: how long the long steps will take, and defaults that keep them short.
"""
