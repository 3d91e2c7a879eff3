"""QAT steps per second on 1 and 2 gloo processes (workbench.stages.distributed).

`python -m benchmarks.ddp_scaling [--model sample:digits_cnn] [--steps 40] [--batch 64]`
captures and prepares the model once, then times `--steps` QAT steps (after 5 warm-up
steps; calibration and evaluation not timed) of:

- one process, one thread, the plain `QatRun` at the global batch;
- one process, as many threads as there are cores (what one process can do with the machine);
- 2 ranks forked from this process, one thread each, DDP over gloo, the same global batch
  (each rank takes half): the same computation as the first, so strong scaling;
- 2 ranks at twice the global batch (each rank a whole batch): weak scaling, in samples/s;
- 2 ranks at the same global batch with observers off (no per-quantizer all-reduce).

Prints one JSON object with steps/s and samples/s of each and the ratios to one process.
"""

from __future__ import annotations

import argparse
import datetime
import json
import multiprocessing
import os
import socket
import time
import warnings
from typing import Any

import torch

from workbench.data.datasets import load_data
from workbench.model.capture import capture
from workbench.quantization.pattern_cache import install_pattern_cache
from workbench.quantization.recipe import Recipe
from workbench.stages.distributed import DistributedQatRun, start_distributed
from workbench.stages.steps import prepare
from workbench.stages.training import QatConfig, QatRun

WARMUP = 5


def _timed(run: QatRun, steps: int) -> float:
    for _ in range(WARMUP):
        run.step()
    start = time.perf_counter()
    for _ in range(steps):
        run.step()
    return time.perf_counter() - start


def _config(steps: int, batch: int, observers: bool = True) -> QatConfig:
    # Observers and BN stay live through the timed steps (the costly, synchronised part),
    # unless `observers` is False: then observers are off from step 1 (no per-quantizer
    # all-reduce), to show what the observer rule costs.
    return QatConfig(steps=steps + WARMUP, batch_size=batch, lr=1e-4, calibration_batches=2,
                     freeze_bn_step=10**6,
                     freeze_observer_step=10**6 if observers else 0)  # fmt: skip


def _rank(rank: int, port: int, prepared: Any, data: Any, config: QatConfig, steps: int,
          queue: Any) -> None:  # fmt: skip
    os.environ.update(RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    torch.distributed.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
        timeout=datetime.timedelta(seconds=120),
    )  # fmt: skip
    context = start_distributed("cpu")
    assert context is not None
    run = DistributedQatRun(prepared, data, config, context=context, record_ranges=False)
    seconds = _timed(run, steps)
    queue.put((rank, seconds))
    torch.distributed.destroy_process_group()


def _two_ranks(prepared: Any, data: Any, config: QatConfig, steps: int) -> float:
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    ranks = [context.Process(target=_rank, args=(r, port, prepared, data, config, steps, queue))
             for r in (0, 1)]  # fmt: skip
    for process in ranks:
        process.start()
    seconds = [queue.get(timeout=600)[1] for _ in ranks]
    for process in ranks:
        process.join(60)
    return max(seconds)


def measure(model: str, steps: int, batch: int) -> dict[str, Any]:
    install_pattern_cache()
    captured = capture(model)
    recipe = Recipe(mode="qat")
    prepared = prepare(captured, recipe)
    data = load_data("digits", captured.signature, task=recipe.task())
    cores = os.cpu_count() or 1
    rows: dict[str, dict[str, float]] = {}

    def row(name: str, seconds: float, global_batch: int) -> None:
        rows[name] = {"steps_per_s": round(steps / seconds, 2),
                      "samples_per_s": round(steps * global_batch / seconds, 1)}  # fmt: skip

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    row("1 process, 1 thread", _timed(QatRun(prepared, data, _config(steps, batch),
                                             record_ranges=False), steps), batch)  # fmt: skip
    torch.set_num_threads(cores)
    many = QatRun(prepared, data, _config(steps, batch), record_ranges=False)
    row(f"1 process, {cores} threads", _timed(many, steps), batch)
    torch.set_num_threads(threads)
    row("2 gloo ranks, same global batch",
        _two_ranks(prepared, data, _config(steps, batch), steps), batch)  # fmt: skip
    row("2 gloo ranks, twice the global batch",
        _two_ranks(prepared, data, _config(steps, 2 * batch), steps), 2 * batch)  # fmt: skip
    row("2 gloo ranks, same global batch, observers off",
        _two_ranks(prepared, data, _config(steps, batch, False), steps), batch)  # fmt: skip
    base = rows["1 process, 1 thread"]
    ratios = {name: {"steps": round(r["steps_per_s"] / base["steps_per_s"], 2),
                     "samples": round(r["samples_per_s"] / base["samples_per_s"], 2)}
              for name, r in rows.items()}  # fmt: skip
    return {"model": model, "steps": steps, "batch": batch, "cores": cores,
            "torch": torch.__version__, "runs": rows,
            "ratio_to_1_process_1_thread": ratios}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="sample:digits_cnn")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=64, help="the global batch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(json.dumps(measure(args.model, args.steps, args.batch), indent=2))


if __name__ == "__main__":
    main()
