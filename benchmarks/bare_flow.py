"""The whole QAT flow written bare against torch + torchao, for one cold process.

`python -m benchmarks.bare_flow resnet --steps N --out X.pt2` does what
`python -m workbench quantize --model tests/models/hf_models.py:resnet --mode qat --data random
--steps N` does at its core, and nothing else: torch.export.export (batch dynamic, and the
sequence for token inputs, like the workbench's capture) -> prepare_qat_pt2e with
X86InductorQuantizer -> N Adam steps of batch 64 on random inputs, distilled from the float
model (KL on the logits, the workbench's loss for data without targets) -> eval -> convert_pt2e
-> torch.export.export of the converted model -> torch.export.save -> torch.export.load and one
comparison with the in-memory model. Prints one JSON object: the seconds of each phase and
the total since this module started running.
"""

from __future__ import annotations

import time

START = time.perf_counter()

import argparse  # noqa: E402
import importlib.util  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import warnings  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
HF_MODELS = ROOT / "tests" / "models" / "hf_models.py"
BATCH = 64


def load_hf_models() -> Any:
    """tests/models/hf_models.py as a module (the file the workbench's CLI is pointed at)."""
    spec = importlib.util.spec_from_file_location("bench_hf_models", HF_MODELS)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", choices=("resnet", "bert"))
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    phases: dict[str, float] = {}
    mark = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal mark
        now = time.perf_counter()
        phases[name] = round(now - mark, 4)
        mark = now

    import torch
    import torch.nn.functional as F
    from torch.export import Dim

    lap("imports: torch")
    from torchao.quantization.pt2e import (
        move_exported_model_to_eval,
        move_exported_model_to_train,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    lap("imports: torchao pt2e")
    import transformers

    for name in ("ResNetConfig", "ResNetForImageClassification", "BertConfig",
                 "BertForSequenceClassification"):  # fmt: skip
        getattr(transformers, name)  # imported lazily by the factory; timed apart
    lap("imports: transformers")
    hf = load_hf_models()
    model, example = getattr(hf, args.model)()
    lap("build model")
    generator = torch.Generator().manual_seed(0)
    batch = Dim("batch", min=2, max=4096)
    if args.model == "resnet":
        args_, kwargs = example, {}
        dynamic: Any = ({0: batch},)

        def draw() -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
            return (torch.rand(BATCH, *example[0].shape[1:], generator=generator),), {}
    else:
        args_, kwargs = (), example
        seq = Dim("seq", min=2, max=64)
        dynamic = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}

        def draw() -> tuple[tuple[torch.Tensor, ...], dict[str, torch.Tensor]]:
            return (), hf._tokens(BATCH, hf.SEQ, generator)

    program = torch.export.export(model, args_, kwargs, dynamic_shapes=dynamic)
    teacher = program.module()
    lap("export")
    quantizer = X86InductorQuantizer().set_global(
        get_default_x86_inductor_quantization_config(is_qat=True)
    )
    prepared = prepare_qat_pt2e(program.module(), quantizer)
    lap("prepare")
    move_exported_model_to_train(prepared)
    optimizer = torch.optim.Adam(prepared.parameters(), lr=1e-4)
    for _ in range(args.steps):
        a, k = draw()
        with torch.no_grad():
            reference = teacher(*a, **k).logits
        logits = prepared(*a, **k).logits
        loss = F.kl_div(
            F.log_softmax(logits, -1), F.log_softmax(reference, -1),
            log_target=True, reduction="batchmean",
        )  # fmt: skip
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    move_exported_model_to_eval(prepared)
    lap("train")
    converted = convert_pt2e(prepared)
    move_exported_model_to_eval(converted)
    lap("convert")
    final = torch.export.export(converted, args_, kwargs, dynamic_shapes=dynamic)
    lap("re-export")
    torch.export.save(final, str(args.out))
    lap("save")
    reloaded = torch.export.load(str(args.out)).module()
    with torch.no_grad():
        diff = (reloaded(*args_, **kwargs).logits - converted(*args_, **kwargs).logits).abs()
    assert float(diff.max()) <= 1e-5, float(diff.max())
    lap("reload + check")
    print(json.dumps({"phases": phases, "total": round(time.perf_counter() - START, 4)}))


if __name__ == "__main__":
    main()
