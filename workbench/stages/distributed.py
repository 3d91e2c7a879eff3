"""QAT on several processes (torchrun, DistributedDataParallel) and on a chosen device.

`torchrun --nproc-per-node N -m workbench quantize --mode qat ...` starts N copies of the CLI;
`start_distributed` sees torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR,
MASTER_PORT) and joins the process group: gloo on the CPU, NCCL on CUDA. Each rank then trains
a `DistributedQatRun`: the prepared graph wrapped in torch's DistributedDataParallel, which
averages the gradients. Everything else is the single-process `QatRun`, so a distributed run
is the same computation as one process with the whole batch:

- Data: `--batch-size` is the global batch. Each rank takes rows rank::world of every global
  batch the data would give one process (`RankData`); a stream (the data function's own
  batches) is read rank-strided instead: rank r trains on batches r, r + world, ...
  Evaluation reads the whole evaluation split on every rank (the models are equal, so the
  results are too, and every rank keeps the same best state).
- Observers (`OBSERVER_RULE`): DDP is built with `forward_sync_buffers=False` (by default it
  would copy rank 0's observer and BN buffers over everyone's at each forward; buffers are
  still copied from rank 0 once, when DDP is built, so every rank starts equal). Before a per-tensor
  fake quantizer observes, the min and max of its input are all-reduced (MIN/MAX) across the
  ranks and observed first; the rank's own tensor is then fake-quantized with observing off.
  Every rank so observes exactly what one process observes on the global batch, for min/max
  and moving-average min/max observers alike. Per-channel fake quantizers (weights) read the
  same weights on every rank and need nothing. Histogram observers are refused.
- BatchNorm (`BN_RULE`): an exported graph's aten.batch_norm cannot become SyncBatchNorm, so
  each rank normalizes with its own batch's statistics (as DDP without SyncBatchNorm does);
  after every optimizer step the running mean and variance are averaged across ranks.
- Files: rank 0 alone writes checkpoints (and, in the CLI, the report, the recipe and the
  export). A checkpoint is an ordinary `QatRun` checkpoint of the global batch, its meta
  saying the world size: `QatRun.resume` continues it on one process, as the app does.
- Failure: a rank that loses the others (a killed process, a timeout) raises TrainingError
  naming the last checkpoint; the process group's `timeout` bounds every wait.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import os
import shlex
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.fx import GraphModule
from torch.nn.parallel import DistributedDataParallel
from torch.utils import _pytree as pytree

from workbench.data.datasets import Batch, Dataset
from workbench.data.task import Task
from workbench.errors import WorkbenchError, first_line
from workbench.stages.stage import Stage
from workbench.stages.training import CHECKPOINT_NAME, QatConfig, QatRun, TrainingError

__all__ = [
    "BN_RULE",
    "DEVICES",
    "DIST_TIMEOUT_S",
    "OBSERVER_RULE",
    "DistributedContext",
    "DistributedQatRun",
    "RankData",
    "checkpoint_origin",
    "launched_by_torchrun",
    "local_context",
    "resolve_device",
    "same_run",
    "start_distributed",
    "stop_distributed",
    "torchrun_command",
    "train_qat_distributed",
]

DEVICES = ("cpu", "cuda", "auto")
DIST_TIMEOUT_S = 300.0  # the longest any rank waits for the others (a dead peer, a hang)
OBSERVER_RULE = (
    "global-batch min/max: each per-tensor fake quantizer observes the min and max of its "
    "input all-reduced (MIN/MAX) across ranks before fake-quantizing its own rank's tensor, "
    "so every rank holds the ranges one process would get from the global batch; "
    "per-channel (weight) fake quantizers read the same weights on every rank"
)
BN_RULE = (
    "per-rank batch statistics in the forward (an exported graph's batch_norm cannot be "
    "SyncBatchNorm); running mean and variance averaged across ranks after every step"
)
_TORCHRUN_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistributedContext:
    """This process's place in a distributed run, and the device it computes on."""

    rank: int
    world_size: int
    local_rank: int
    backend: str  # "gloo" (CPU) or "nccl" (CUDA)
    device: str  # "cpu" or "cuda:N"

    @property
    def is_main(self) -> bool:
        """Rank 0: the only one that writes files."""
        return self.rank == 0

    def as_report(self) -> dict[str, Any]:
        """The report's "distributed" section."""
        return {"world_size": self.world_size, "backend": self.backend,
                "observer_rule": OBSERVER_RULE, "bn_rule": BN_RULE}  # fmt: skip


def resolve_device(name: str) -> str:
    """The device that --device cpu, cuda or auto (CUDA when there is a GPU) names; raises
    WorkbenchError for cuda without one."""
    if name not in DEVICES:
        raise WorkbenchError(f"Unknown device {name!r}.", f"Use one of {', '.join(DEVICES)}.")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise WorkbenchError(
            f"--device cuda was asked for, but torch {torch.__version__} sees no CUDA GPU"
            + (" (this torch is a CPU-only build)" if torch.version.cuda is None else "")
            + ".",
            "Use --device cpu (or auto), or install a CUDA build of torch on a machine with "
            "an NVIDIA GPU and driver.",
        )
    return name


def launched_by_torchrun(environ: Mapping[str, str] | None = None) -> bool:
    """Whether torchrun (or torch.distributed.run) started this process."""
    environ = os.environ if environ is None else environ
    return all(key in environ for key in _TORCHRUN_ENV)


def start_distributed(
    device: str, *, timeout_s: float = DIST_TIMEOUT_S, environ: Mapping[str, str] | None = None
) -> DistributedContext | None:
    """Join torchrun's process group (gloo on the CPU, NCCL on CUDA); None when not under
    torchrun. `device` is a resolved device ("cpu" or "cuda"); each rank takes the GPU of
    its LOCAL_RANK. A group already started (by a test, say) is joined as it is."""
    environ = os.environ if environ is None else environ
    if not launched_by_torchrun(environ) and not dist.is_initialized():
        return None
    cuda = device.startswith("cuda")
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        if cuda and not dist.is_nccl_available():
            raise WorkbenchError("This torch has no NCCL backend for CUDA processes.",
                                 "Use --device cpu (gloo), or a CUDA build of torch.")  # fmt: skip
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    backend = str(dist.get_backend())
    local_rank = int(environ.get("LOCAL_RANK", dist.get_rank()))
    if cuda:
        count = torch.cuda.device_count()
        device = f"cuda:{local_rank % count}"
        torch.cuda.set_device(device)
    return DistributedContext(dist.get_rank(), dist.get_world_size(), local_rank, backend, device)


def stop_distributed(context: DistributedContext | None) -> None:
    """Leave the process group (a no-op without one)."""
    if context is not None and dist.is_initialized():
        dist.destroy_process_group()


def checkpoint_origin(meta: Mapping[str, Any] | None) -> str | None:
    """What made a checkpoint, from `QatRun.peek(...)["meta"]`: "trained on 2 gloo processes
    (cpu)" for a distributed run's, None for one process's."""
    world = int((meta or {}).get("world_size", 1))
    if world <= 1:
        return None
    return f"trained on {world} {meta['backend']} processes ({meta['device']})"  # type: ignore[index]


def same_run(meta: Mapping[str, Any] | None, expected: Mapping[str, Any]) -> bool:
    """Whether a checkpoint's meta matches `expected` on `expected`'s keys: a distributed
    run's checkpoint (whose meta also says world size, backend and device) resumes where a
    one-process one of the same model, recipe and data would."""
    return meta is not None and all(meta.get(key) == value for key, value in expected.items())


def torchrun_command(
    command: str, nproc_per_node: int = 2, *, checkpoint_dir: str | None = "checkpoints"
) -> str:
    """`python -m workbench quantize --mode qat ...` as the torchrun command that runs it on
    `nproc_per_node` processes of this machine (gloo on the CPU; add --device cuda for one
    GPU per process); --batch-size stays the global batch. `checkpoint_dir` is added as
    --checkpoint-dir unless the command has one (None: not added), so what the cluster
    trained can be resumed or inspected on one process. Raises ValueError for PTQ, which
    torchrun refuses."""
    prefix = "python -m workbench "
    if not command.startswith(prefix):
        raise ValueError(f"not a workbench command: {command!r}")
    if " --mode ptq" in command:
        raise ValueError("PTQ runs on one process: only QAT commands have a torchrun form")
    rest = command[len(prefix) :]
    if checkpoint_dir is not None and "--checkpoint-dir" not in rest:
        rest += f" --checkpoint-dir {shlex.quote(checkpoint_dir)}"
    return f"torchrun --standalone --nproc-per-node {nproc_per_node} -m workbench {rest}"


class RankData(Dataset):
    """A rank's share of a dataset, its batches moved to `device`.

    `train_batches(batch_size)` takes the global batch size: rows rank::world of each batch
    one process would get (a stream: every world-th batch, from the rank's own). Evaluation
    batches are the whole split on every rank.
    """

    def __init__(self, base: Dataset, *, rank: int = 0, world_size: int = 1,
                 device: str = "cpu") -> None:  # fmt: skip
        super().__init__(base.spec, base.task, base.quality, base.has_targets)
        self.base, self.rank, self.world_size, self.device = base, rank, world_size, device
        self.eval_limit = base.eval_limit
        self._eval_size = base.eval_size

    @property
    def streamed(self) -> bool:
        return self.base.streamed

    @property
    def train_size(self) -> int | None:
        return self.base.train_size

    def batch_text(self, batch_size: int) -> str:
        text = self.base.batch_text(batch_size)
        if self.world_size == 1:
            return text
        if self.streamed:
            return f"{text}, every {self.world_size}th on each of {self.world_size} ranks"
        return f"{text} ({batch_size // self.world_size} on each of {self.world_size} ranks)"

    def train_batches(self, batch_size: int, *, seed: int = 0) -> Iterator[Batch]:
        batches = self.base.train_batches(batch_size, seed=seed)
        if self.streamed:
            for index, batch in enumerate(batches):
                if index % self.world_size == self.rank:
                    yield self._moved(batch)
            return
        if batch_size % self.world_size:
            raise ValueError(f"batch size {batch_size} is not a multiple of {self.world_size}")
        for batch in batches:
            yield self._moved(self._share(batch))

    def eval_batches(self, batch_size: int = 256) -> Iterator[Batch]:
        for batch in self.base.eval_batches(batch_size):
            yield self._moved(batch)

    def counted_eval(self, samples: int) -> None:
        super().counted_eval(samples)
        self.base.counted_eval(samples)

    def with_task(self, task: Task) -> Dataset:
        return RankData(self.base.with_task(task), rank=self.rank, world_size=self.world_size,
                        device=self.device)  # fmt: skip

    def limited(self, samples: int | None) -> Dataset:
        return RankData(self.base.limited(samples), rank=self.rank,
                        world_size=self.world_size, device=self.device)  # fmt: skip

    def _share(self, batch: Batch) -> Batch:
        size = batch.size
        if self.world_size == 1:
            return batch

        def rows(t: Any) -> Any:
            if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] == size:
                return t[self.rank :: self.world_size]
            return t

        inputs = batch.inputs.map(rows)
        targets = rows(batch.targets) if batch.targets is not None else None
        return Batch(inputs, targets, pytree.tree_map(rows, batch.raw))

    def _moved(self, batch: Batch) -> Batch:
        if self.device == "cpu":
            return batch

        def move(t: Any) -> Any:
            return t.to(self.device) if isinstance(t, torch.Tensor) else t

        targets = move(batch.targets) if batch.targets is not None else None
        return Batch(batch.inputs.map(move), targets, pytree.tree_map(move, batch.raw))


class DistributedQatRun(QatRun):
    """A `QatRun` on one rank of a distributed run (see the module docstring), or on one
    process on another device (`context` of world size 1 and no process group).

    `config.batch_size` is the global batch; `checkpoint_dir` is where rank 0 writes (the
    other ranks write nothing, but name it in their messages). The checkpoint's meta adds
    "world_size", "backend" and "device" to the caller's.
    """

    def __init__(
        self,
        stage: Stage,
        data: Dataset,
        config: QatConfig,
        *,
        context: DistributedContext,
        teacher: GraphModule | None = None,
        checkpoint_dir: str | Path | None = None,
        meta: dict[str, str | int | float] | None = None,
        **options: Any,
    ) -> None:
        self.context = context
        world = context.world_size
        if world > 1 and not data.streamed and config.batch_size % world:
            raise WorkbenchError(
                f"The batch size {config.batch_size} does not split evenly across "
                f"{world} processes.",
                f"Give a --batch-size that is a multiple of {world} (it is the global batch; "
                f"each process takes an equal share).",
            )
        _refuse_histograms(stage.graph_module)
        self.checkpoint_file = (
            Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
        )
        device = context.device
        if device != "cpu":
            stage = dataclasses.replace(stage, graph_module=stage.copy_module().to(device))
            if teacher is not None:
                teacher = _copy_to(teacher, device)
            options["record_ranges"] = False  # the recorder's buffers live on the CPU
        shared = data if isinstance(data, RankData) else RankData(
            data, rank=context.rank, world_size=world, device=device)  # fmt: skip
        meta = {**(meta or {}), "world_size": world, "backend": context.backend,
                "device": device}  # fmt: skip
        super().__init__(stage, shared, config, teacher=teacher,
                         checkpoint_dir=checkpoint_dir if context.is_main else None,
                         meta=meta, **options)  # fmt: skip

    @property
    def _grouped(self) -> bool:
        return self.context.world_size > 1 and dist.is_initialized()

    def _build(self) -> None:
        super()._build()
        self._bn = _bn_buffers(self.model)
        if not self._grouped:
            return
        used = {str(n.target) for n in self.model.graph.nodes if n.op == "get_attr"}
        unused = any(name not in used for name, p in self.model.named_parameters()
                     if p.requires_grad)  # fmt: skip
        cuda = self.context.device.startswith("cuda")
        self.trainer = DistributedDataParallel(
            self.model, device_ids=[torch.device(self.context.device)] if cuda else None,
            forward_sync_buffers=False, find_unused_parameters=unused,
        )  # fmt: skip
        self.optimizer.register_step_post_hook(lambda *_: self._average_bn())

    def _average_bn(self) -> None:
        if not self._bn:
            return
        with torch.no_grad():
            flat = torch.cat([b.reshape(-1) for b in self._bn])
            dist.all_reduce(flat)
            flat /= self.context.world_size
            offset = 0
            for buffer in self._bn:
                buffer.copy_(flat[offset : offset + buffer.numel()].view_as(buffer))
                offset += buffer.numel()

    def _loss_value(self, loss: torch.Tensor) -> float:
        """The global batch's loss: the mean over ranks of each rank's mean (equal shares)."""
        if not self._grouped:
            return float(loss.item())
        value = loss.detach().reshape(1).to(torch.float64)
        dist.all_reduce(value)
        return float(value.item()) / self.context.world_size

    def _calibrate(self) -> None:
        try:
            with self._observers_synced():
                super()._calibrate()
        except RuntimeError as exc:
            if not self._grouped or not _lost_peer(exc):
                raise
            raise self._lost(0, exc) from exc

    def step(self) -> dict[str, Any]:
        step = self.step_count + 1
        try:
            with self._observers_synced():
                return super().step()
        except TrainingError:
            raise
        except RuntimeError as exc:
            if not self._grouped or not _lost_peer(exc):
                raise
            raise self._lost(step, exc) from exc

    def _lost(self, step: int, exc: BaseException) -> TrainingError:
        if not hasattr(self, "_good"):  # still calibrating: nothing trained, nothing saved
            where = "nothing was trained or saved yet"
        elif self.checkpoint_file is not None:
            where = (
                f"rank 0's checkpoint {self.checkpoint_file} (step {self._good['step']}) is kept"
            )
        else:
            where = f"the last good step was {self._good['step']} (no checkpoint folder was given)"
        return TrainingError(
            f"Rank {self.context.rank} of {self.context.world_size} lost the other processes "
            f"at step {step} ({first_line(exc, limit=160)}): the run stopped; {where}.",
            "See which rank failed first (torchrun's summary: killed, out of memory, an "
            "error); resume the checkpoint on one process (Train & convert: Resume "
            "checkpoint, or QatRun.resume) or start torchrun again.",
        )

    @contextlib.contextmanager
    def _observers_synced(self) -> Iterator[None]:
        if not self._grouped:
            yield
            return
        handles = []
        paused: list[torch.nn.Module] = []
        for module in self.model.modules():
            if _per_tensor_fake_quant(module):
                handles.append(module.register_forward_pre_hook(_observe_globally(paused)))
                handles.append(module.register_forward_hook(_resume_observing(paused)))
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
            for module in paused:
                module.observer_enabled[0] = 1


def _observe_globally(paused: list[torch.nn.Module]) -> Any:
    """A forward pre-hook: observe the all-reduced min and max of the input, then let the
    forward fake-quantize the rank's own input with observing off.

    A plain closure (not a bound method): deep copies of the model share it, harmlessly,
    since copies made during a step (evaluation) have their observers off."""

    def hook(module: torch.nn.Module, args: tuple[Any, ...]) -> None:
        if not int(module.observer_enabled[0]):
            return
        (x,) = args[:1]
        with torch.no_grad():
            low, high = torch.aminmax(x.detach())
            extremes = torch.stack([-low, high]).to(torch.float32)
            dist.all_reduce(extremes, op=dist.ReduceOp.MAX)
            module.forward(torch.stack([-extremes[0], extremes[1]]).to(x.dtype))
        module.observer_enabled[0] = 0
        paused.append(module)

    return hook


def _resume_observing(paused: list[torch.nn.Module]) -> Any:
    def hook(module: torch.nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if paused and paused[-1] is module:
            paused.pop()
            module.observer_enabled[0] = 1

    return hook


def _per_tensor_fake_quant(module: torch.nn.Module) -> bool:
    return (
        hasattr(module, "activation_post_process")
        and hasattr(module, "observer_enabled")
        and not bool(getattr(module, "is_per_channel", False))
        and module.activation_post_process.min_val.dim() == 0
    )


def _refuse_histograms(model: GraphModule) -> None:
    names = [
        name
        for name, m in model.named_modules()
        if type(getattr(m, "activation_post_process", None)).__name__ == "HistogramObserver"
    ]
    if names:
        raise WorkbenchError(
            f"Histogram observers ({', '.join(names[:4])}) cannot be combined across "
            "processes: their ranges would differ from rank to rank.",
            "Use the minmax or moving_average observer for distributed QAT.",
        )


def _bn_buffers(model: GraphModule) -> list[torch.Tensor]:
    """The running mean and variance of every aten.batch_norm in the graph."""
    found: dict[str, torch.Tensor] = {}
    for node in model.graph.nodes:
        if node.target is torch.ops.aten.batch_norm.default:
            for arg in node.args[3:5]:
                if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                    found[str(arg.target)] = model.get_buffer(str(arg.target))
    return list(found.values())


def _lost_peer(exc: BaseException) -> bool:
    if isinstance(exc, dist.DistError):
        return True
    text = str(exc).lower()
    return any(word in text for word in ("gloo", "nccl", "connection", "timed out", "peer"))


def _copy_to(module: torch.nn.Module, device: str) -> torch.nn.Module:
    import copy

    return copy.deepcopy(module).to(device)


def local_context(device: str) -> DistributedContext:
    """One process on `device` (a resolved device), no process group."""
    return DistributedContext(0, 1, 0, "none", device)


def train_qat_distributed(
    stage: Stage,
    data: Dataset,
    config: QatConfig,
    *,
    context: DistributedContext,
    teacher: GraphModule | None = None,
    keep: str = "best",
    progress: Any = None,
    checkpoint_dir: str | Path | None = None,
    checkpoint_every: int = 10,
    meta: dict[str, str | int | float] | None = None,
) -> Stage:
    """`train_qat` on this rank (and device): the kept state as a stage on the CPU, ready for
    convert and export. Only rank 0 reports progress and writes checkpoints."""
    run = DistributedQatRun(
        stage, data, config, context=context, teacher=teacher, record_ranges=False,
        checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, meta=meta,
    )  # fmt: skip
    run.run(progress=progress if context.is_main else None)
    trained = run.stage(keep)
    if context.device != "cpu":
        trained = dataclasses.replace(trained, graph_module=trained.graph_module.to("cpu"))
    return trained
