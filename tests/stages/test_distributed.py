"""Distributed QAT (workbench.stages.distributed) with 2 gloo processes on the CPU.

The library tests fork their ranks from the test process after capture and prepare (a rank
then starts in well under a second); the CLI test runs torchrun itself.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from workbench.data.datasets import load_data
from workbench.errors import WorkbenchError
from workbench.model.capture import capture
from workbench.quantization.recipe import Recipe
from workbench.stages.distributed import (
    BN_RULE,
    OBSERVER_RULE,
    DistributedQatRun,
    RankData,
    checkpoint_origin,
    resolve_device,
    same_run,
    start_distributed,
    torchrun_command,
    train_qat_distributed,
)
from workbench.stages.steps import convert, prepare, run
from workbench.stages.training import CHECKPOINT_NAME, QatConfig, QatRun, TrainingError

ROOT = Path(__file__).resolve().parents[2]
MODELS = "tests/models/distributed_models.py"
TIMEOUT_S = 120


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rank_main(rank: int, world: int, port: int, work: Callable[[int], Any], out: Path) -> None:
    """One forked rank: join the group, do `work(rank)`, save what it returns."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        torch.distributed.init_process_group(
            "gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
            timeout=datetime.timedelta(seconds=30),
        )  # fmt: skip
        result = work(rank)
        torch.save(result, out / f"rank{rank}.pt")
        torch.distributed.destroy_process_group()
    except BaseException as exc:
        (out / f"rank{rank}.error").write_text(f"{type(exc).__name__}: {exc}\n"
                                               + traceback.format_exc())  # fmt: skip
        os._exit(3)


def _on_ranks(work: Callable[[int], Any], out: Path, world: int = 2) -> list[int]:
    """Run `work` on `world` forked gloo ranks; their exit codes (results in out/rankN.pt)."""
    context = multiprocessing.get_context("fork")
    port = _free_port()
    ranks = [context.Process(target=_rank_main, args=(r, world, port, work, out))
             for r in range(world)]  # fmt: skip
    for process in ranks:
        process.start()
    for process in ranks:
        process.join(TIMEOUT_S)
        if process.is_alive():
            process.kill()
            process.join()
            pytest.fail(f"rank {ranks.index(process)} still ran after {TIMEOUT_S} s")
    return [int(p.exitcode or 0) for p in ranks]


def _prepared(func: str, data: str = "digits") -> tuple[Any, Any, Any]:
    captured = capture(f"{MODELS}:{func}")
    recipe = Recipe(mode="qat")
    return captured, prepare(captured, recipe), load_data(data, captured.signature,
                                                          task=recipe.task())  # fmt: skip


def _floats(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v for k, v in state.items() if v.is_floating_point() and v.numel()}


def test_two_ranks_of_batch_b_match_one_process_of_batch_2b(tmp_path: Path) -> None:
    _, prepared, data = _prepared("mlp")
    config = QatConfig(steps=6, batch_size=32, lr=1e-3, calibration_batches=2)

    def work(rank: int) -> dict[str, Any]:
        context = start_distributed("cpu")
        assert context is not None and context.world_size == 2 and context.backend == "gloo"
        run = DistributedQatRun(prepared, data, config, context=context,
                                checkpoint_dir=tmp_path / f"rank{rank}-checkpoints")  # fmt: skip
        run.run()
        return {"state": run.model.state_dict(), "losses": run.losses, "meta": run.meta}

    assert _on_ranks(work, tmp_path) == [0, 0], _errors(tmp_path)
    one = QatRun(prepared, data, config)
    one.run()
    reference = _floats(one.model.state_dict())
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt", weights_only=True)
        state = _floats(got["state"])
        assert state.keys() == reference.keys()
        for name, value in reference.items():  # weights, biases, scales and observer ranges
            torch.testing.assert_close(state[name], value, rtol=1e-5, atol=1e-6, msg=name)
        torch.testing.assert_close(got["losses"], one.losses, rtol=1e-5, atol=1e-6)
    assert got["meta"]["world_size"] == 2 and got["meta"]["backend"] == "gloo"
    # Rank 0 alone writes: rank 1 was given a folder too, and left it alone.
    assert (tmp_path / "rank0-checkpoints" / CHECKPOINT_NAME).is_file()
    assert not (tmp_path / "rank1-checkpoints").exists()


def test_conv_bn_trains_on_two_ranks_and_converts(tmp_path: Path) -> None:
    _, prepared, data = _prepared("conv_bn")
    config = QatConfig(steps=8, batch_size=32, lr=1e-3, calibration_batches=2,
                       freeze_bn_step=6)  # fmt: skip

    def work(rank: int) -> dict[str, Any]:
        context = start_distributed("cpu")
        assert context is not None
        trained = train_qat_distributed(prepared, data, config, context=context)
        return {"state": trained.graph_module.state_dict(), "history": trained.history}

    assert _on_ranks(work, tmp_path) == [0, 0], _errors(tmp_path)
    states = [_floats(torch.load(tmp_path / f"rank{r}.pt", weights_only=True)["state"])
              for r in (0, 1)]  # fmt: skip
    for name, value in states[0].items():  # BN statistics averaged, observers reduced
        torch.testing.assert_close(states[1][name], value, rtol=0, atol=1e-6, msg=name)
    assert any("running_var" in name for name in states[0])
    model = prepared.copy_module()
    model.load_state_dict(torch.load(tmp_path / "rank0.pt", weights_only=True)["state"])
    converted = convert(dataclasses.replace(prepared, name="trained", graph_module=model))
    targets = {n.target for n in converted.graph_module.graph.nodes}
    assert torch.ops.aten.batch_norm.default not in targets  # folded into the int8 conv
    assert torch.ops.quantized_decomposed.quantize_per_tensor.default in targets
    # The int8 model predicts what the trained fake-quant model predicts (random-init
    # weights after 8 steps: agreement is the check, not accuracy).
    trained = dataclasses.replace(prepared, name="trained", graph_module=model)
    images = next(data.eval_batches(256)).inputs
    with torch.no_grad():
        fake_quant = run(_eval_copy(trained.graph_module), images)
        int8 = run(converted.graph_module, images)
    assert (fake_quant.argmax(1) == int8.argmax(1)).float().mean() > 0.9


def test_killed_rank_stops_the_run_with_a_message_and_a_resumable_checkpoint(
    tmp_path: Path,
) -> None:
    _, prepared, data = _prepared("mlp", data=f"{MODELS}:killed_rank")
    config = QatConfig(steps=20, batch_size=8, lr=1e-3, calibration_batches=2)
    folder = tmp_path / "checkpoints"

    def work(rank: int) -> str:
        context = start_distributed("cpu")
        assert context is not None
        run = DistributedQatRun(prepared, data, config, context=context, checkpoint_dir=folder,
                                checkpoint_every=5)  # fmt: skip
        try:
            run.run()
        except TrainingError as exc:
            return f"{exc.problem}\n{exc.fix}"
        return "finished"

    codes = _on_ranks(work, tmp_path)
    assert codes[1] == -signal.SIGKILL
    assert codes[0] == 0, _errors(tmp_path)
    message = torch.load(tmp_path / "rank0.pt", weights_only=True)
    assert "Rank 0 of 2 lost the other processes at step" in message, message
    assert f"{folder / CHECKPOINT_NAME} (step 10) is kept" in message, message
    assert "resume the checkpoint on one process" in message
    found = QatRun.peek(folder / CHECKPOINT_NAME)
    assert found is not None and found["step"] == 10 and found["meta"]["world_size"] == 2
    resumed = QatRun.resume(folder / CHECKPOINT_NAME, prepared, data,
                            QatRun.config_of(found["settings"]))  # fmt: skip
    resumed.run()
    assert resumed.step_count == 20 and bool(torch.isfinite(resumed.losses).all())


def test_rank_data_shares_the_global_batch() -> None:
    _, _, data = _prepared("mlp")
    whole = next(data.train_batches(8, seed=3))
    parts = [next(RankData(data, rank=r, world_size=2).train_batches(8, seed=3)) for r in (0, 1)]
    assert [p.size for p in parts] == [4, 4]
    assert torch.equal(torch.cat([parts[0].targets, parts[1].targets]).sort().values,
                       whole.targets.sort().values)  # fmt: skip
    assert torch.equal(parts[1].inputs.args[0], whole.inputs.args[0][1::2])


def test_cuda_without_a_gpu_is_a_plain_error() -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(WorkbenchError, match="sees no CUDA GPU"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"
    from workbench.cli import EXIT_BAD_INPUT, main

    assert main(["quantize", "--model", "sample:digits_cnn", "--device", "cuda",
                 "--out", "never.pt2"]) == EXIT_BAD_INPUT  # fmt: skip
    assert not Path("never.pt2").exists()


def test_checkpoint_origin_and_same_run() -> None:
    meta = {"spec": "m", "data": "digits", "world_size": 4, "backend": "nccl", "device": "cuda:0"}
    assert checkpoint_origin(meta) == "trained on 4 nccl processes (cuda:0)"
    assert checkpoint_origin({"spec": "m"}) is None and checkpoint_origin(None) is None
    assert same_run(meta, {"spec": "m", "data": "digits"})
    assert not same_run(meta, {"spec": "m", "data": "random"}) and not same_run(None, {})


def test_torchrun_command() -> None:
    command = "python -m workbench quantize --model sample:digits_cnn --mode qat --out m.pt2"
    assert torchrun_command(command, 4) == (
        "torchrun --standalone --nproc-per-node 4 -m workbench quantize "
        "--model sample:digits_cnn --mode qat --out m.pt2 --checkpoint-dir checkpoints"
    )
    assert torchrun_command(command, checkpoint_dir=None).endswith("--out m.pt2")
    with pytest.raises(ValueError, match="PTQ"):
        torchrun_command(command.replace("qat", "ptq"))


def test_one_process_with_a_checkpoint_dir_writes_a_resumable_checkpoint(
    tmp_path: Path,
) -> None:
    from workbench.cli import EXIT_OK, main

    argv = ["quantize", "--model", f"{MODELS}:mlp", "--mode", "qat", "--steps", "12",
            "--eval-samples", "64", "--device", "auto", "--checkpoint-dir",
            str(tmp_path / "ckpt"), "--out", str(tmp_path / "m.pt2"), "--report",
            str(tmp_path / "r.json"), "--quiet"]  # fmt: skip
    assert main(argv) == EXIT_OK
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["device"] == "cpu" and "distributed" not in report
    found = QatRun.peek(tmp_path / "ckpt" / CHECKPOINT_NAME)
    assert found is not None and found["step"] == 12 and checkpoint_origin(found["meta"]) is None


@pytest.mark.slow
def test_torchrun_quantize_writes_a_pt2_and_a_report_on_rank_0(tmp_path: Path) -> None:
    out, report = tmp_path / "model.pt2", tmp_path / "report.json"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
        "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m",
        "workbench", "quantize", "--model", f"{MODELS}:conv_bn", "--mode", "qat", "--data",
        "digits", "--steps", "6", "--batch-size", "32", "--eval-samples", "128", "--out",
        str(out), "--report", str(report), "--checkpoint-dir", str(tmp_path / "ckpt"),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    written = json.loads(report.read_text())
    rules = {"observer_rule": OBSERVER_RULE, "bn_rule": BN_RULE}
    assert written["distributed"] == {"world_size": 2, "backend": "gloo", **rules}
    assert written["device"] == "cpu"
    assert torch.export.load(out) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ckpt",
        "model.pt2",
        "model.recipe.json",
        "report.json",
    ]
    assert done.stderr.count("wrote ") == 1  # rank 0 alone reports
    # The cluster's checkpoint resumes on one process, as Train & convert resumes one.
    checkpoint = tmp_path / "ckpt" / CHECKPOINT_NAME
    found = QatRun.peek(checkpoint)
    assert found is not None and found["step"] == 6
    assert checkpoint_origin(found["meta"]) == "trained on 2 gloo processes (cpu)"
    _, prepared, data = _prepared("conv_bn")
    expected = {"spec": f"{MODELS}:conv_bn", "recipe": Recipe(mode="qat").to_json(),
                "data": "digits", "eval_every": 0}  # fmt: skip
    assert same_run(found["meta"], expected), found["meta"]
    resumed = QatRun.resume(checkpoint, prepared, data.limited(128),
                            QatRun.config_of(found["settings"]))  # fmt: skip
    assert resumed.done and resumed.best is not None


def _eval_copy(model: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e import disable_observer, move_exported_model_to_eval

    model = copy.deepcopy(model)
    move_exported_model_to_eval(model)
    model.apply(disable_observer)
    return model


def _errors(folder: Path) -> str:
    return "\n".join(p.read_text() for p in sorted(folder.glob("rank*.error")))


@pytest.mark.slow
def test_torchrun_with_a_killed_rank_says_so_and_keeps_a_checkpoint(tmp_path: Path) -> None:
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node",
        "2", "--master-addr", "127.0.0.1", "--master-port", str(_free_port()), "-m",
        "workbench", "quantize", "--model", f"{MODELS}:mlp", "--mode", "qat", "--data",
        f"{MODELS}:killed_rank", "--steps", "40", "--batch-size", "16", "--out",
        str(tmp_path / "model.pt2"), "--checkpoint-dir", str(tmp_path / "ckpt"),
    ]  # fmt: skip
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "HF_HUB_OFFLINE": "1",
        "WORKBENCH_TEST_KILL_AFTER": "80",
    }  # fmt: skip  (16 calibration batches read 32)
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=240)  # fmt: skip
    assert done.returncode != 0
    # Rank 0 sees the lost peer at its next all-reduce, unless torchrun's SIGTERM comes first.
    lost = "error: Rank 0 of 2 lost the other processes at step 24"
    stopped = "error: Rank 0 was stopped by torchrun (SIGTERM)"
    assert lost in done.stderr or stopped in done.stderr, done.stderr[-3000:]
    assert "(step 20) is kept" in done.stderr or stopped in done.stderr
    assert "rank      : 1 (local_rank: 1)" in done.stderr  # torchrun's root cause
    assert not (tmp_path / "model.pt2").exists()
    found = QatRun.peek(tmp_path / "ckpt" / CHECKPOINT_NAME)
    assert found is not None and found["step"] == 20 and found["meta"]["world_size"] == 2
