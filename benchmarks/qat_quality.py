"""QAT quality on a MobileNetV2-style model: a bare torchao QAT loop against the workbench's.

`python -m benchmarks.qat_quality [--model mobilenet_v2|hf_mobilenet_v2] [--steps 20]` runs,
on the same model, the same `random` data (quality: agreement % with the float model), the
same batches, steps and learning rate:

- PTQ: the workbench's prepare -> calibrate (16 batches of 64) -> convert;
- bare: torch.export -> prepare_qat_pt2e with X86InductorQuantizer (QAT config) -> Adam steps
  distilled from the float model (KL on the logits), BN frozen after 60 % of the steps and
  observers after 80 % (freeze_bn_ rewrites aten.batch_norm's `training` argument) ->
  move_exported_model_to_eval -> convert_pt2e: the loop as torchao's docs write it;
- workbench, as before this change (no calibration before step 0, the last state kept), and
  with the defaults (observers calibrated before step 0, the best evaluated state kept).

Prints one JSON object: per run the loss of every step, the fake-quant agreement at the
evaluated steps, and the converted model's agreement. `compare` is importable (the tests use
it on fewer steps).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import importlib.util
import json
import os
import warnings
from pathlib import Path
from typing import Any

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch
import torch.nn.functional as F
from torch.export import Dim
from torchao.quantization.pt2e import (
    disable_observer,
    move_exported_model_to_eval,
    move_exported_model_to_train,
)
from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
    X86InductorQuantizer,
    get_default_x86_inductor_quantization_config,
)

from workbench.data.datasets import Dataset, load_data
from workbench.model.capture import capture
from workbench.quantization.recipe import Recipe
from workbench.stages.steps import calibrate, call, convert, evaluate, exported_stage, prepare
from workbench.stages.training import QatConfig, QatRun, freeze_bn_

MODELS = Path(__file__).resolve().parent.parent / "tests" / "models" / "mobilenet_v2.py"


def load_models() -> Any:
    """tests/models/mobilenet_v2.py as a module."""
    spec = importlib.util.spec_from_file_location("bench_mobilenet_v2", MODELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bare_qat(
    model: torch.nn.Module, example: tuple[torch.Tensor], data: Dataset, config: QatConfig
) -> dict[str, Any]:
    """The QAT loop written bare against torch + torchao (see the module docstring)."""
    teacher = copy.deepcopy(model).eval()
    program = torch.export.export(copy.deepcopy(model), example,
                                  dynamic_shapes=({0: Dim("batch", min=1, max=4096)},))  # fmt: skip
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)
    )
    prepared = prepare_qat_pt2e(program.module(check_guards=False), quantizer)
    move_exported_model_to_train(prepared)
    torch.manual_seed(config.seed)
    params = [p for p in prepared.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=config.lr)
    batches = data.train_batches(config.batch_size, seed=config.seed)
    losses = []
    for step in range(1, config.steps + 1):
        if step > config.bn_freeze_at:
            freeze_bn_(prepared)
        if step == config.observer_freeze_at + 1:
            prepared.apply(disable_observer)
        (x,) = next(batches).inputs.tensors()
        with torch.no_grad():
            target = F.log_softmax(_logits(teacher(x)), -1)
        loss = F.kl_div(F.log_softmax(_logits(prepared(x)), -1), target, log_target=True,
                        reduction="batchmean")  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(round(float(loss), 5))
    move_exported_model_to_eval(prepared)
    prepared.apply(disable_observer)
    converted = convert_pt2e(copy.deepcopy(prepared))
    move_exported_model_to_eval(converted)
    return {
        "losses": losses,
        "fake_quant": _agreement(prepared, teacher, data),
        "int8": _agreement(converted, teacher, data),
    }


def _logits(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.logits


def _agreement(model: torch.nn.Module, teacher: torch.nn.Module, data: Dataset) -> float:
    same = total = 0
    with torch.no_grad():
        for batch in data.eval_batches():
            (x,) = batch.inputs.tensors()
            agree = _logits(model(x)).argmax(-1) == _logits(teacher(x)).argmax(-1)
            same, total = same + int(agree.sum()), total + agree.numel()
    return round(100.0 * same / total, 2)


def compare(
    name: str, steps: int, *, eval_every: int = 5, lr: float = 1e-4, before: bool = True
) -> dict[str, Any]:
    """PTQ, the bare loop and the workbench (before, unless `before` is False, and with its
    defaults) on model `name`."""
    warnings.filterwarnings("ignore")
    model, example = getattr(load_models(), name)()
    captured = capture(f"{MODELS}:{name}")
    teacher = exported_stage(captured).graph_module
    data = load_data("random", captured.signature, task=Recipe().task())
    ptq = convert(calibrate(prepare(captured, Recipe()), data))
    result: dict[str, Any] = {
        "model": name, "steps": steps, "lr": lr,
        "float_classes": _classes(teacher, data),
        "ptq_int8": round(evaluate(ptq.graph_module, data, teacher=teacher), 2),
    }  # fmt: skip
    config = QatConfig(steps=steps, lr=lr)
    result["bare"] = bare_qat(model, example, data, config)
    prepared = prepare(captured, Recipe(mode="qat"))
    runs = [("workbench", config, "best")]
    if before:
        runs.insert(0, ("workbench_before", dataclasses.replace(config, calibration_batches=0),
                        "last"))  # fmt: skip
    for label, run_config, keep in runs:
        run = QatRun(prepared, data, run_config, teacher=teacher, eval_every=eval_every,
                     record_ranges=False).run()  # fmt: skip
        stage = run.stage(keep)
        int8 = evaluate(convert(stage).graph_module, data, teacher=teacher)
        result[label] = {
            "losses": [round(v, 5) for v in run.losses.tolist()],
            "evaluations": {int(r["step"]): round(r["fake_quant"], 2) for r in run.history},
            "kept_step": next(r["step"] for r in stage.history if r["stage"] == "kept"),
            "fake_quant": round(evaluate(stage.graph_module, data, teacher=teacher), 2),
            "int8": round(int8, 2),
        }
    return result


def _classes(teacher: torch.nn.Module, data: Dataset) -> int:
    """How many classes the float model predicts on the evaluation data (10: all of them)."""
    with torch.no_grad():
        predicted = torch.cat([_logits(call(teacher, b.inputs)).argmax(-1)
                               for b in data.eval_batches()])  # fmt: skip
    return int(predicted.unique().numel())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", choices=("mobilenet_v2", "hf_mobilenet_v2"),
                        default="mobilenet_v2")  # fmt: skip
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--lr", type=float, default=1e-4)
    args = parser.parse_args()
    print(json.dumps(compare(args.model, args.steps, lr=args.lr), indent=1))


if __name__ == "__main__":
    main()
