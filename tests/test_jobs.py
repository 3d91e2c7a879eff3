"""Background jobs, run estimates and defaults, evaluation limits, per-session build folders."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from workbench.artifacts.workspace import Workspace
from workbench.data.datasets import TensorDataset, load_data
from workbench.data.task import Task
from workbench.errors import WorkbenchError
from workbench.jobs import Job, Jobs
from workbench.model.signature import ModelInputs
from workbench.quantization.recipe import Recipe
from workbench.stages.estimate import Costs, Defaults, Estimates, about, choose_defaults


def test_a_job_runs_in_a_thread_and_its_result_lands_before_it_says_done() -> None:
    seen: list[tuple[str, int]] = []
    jobs = Jobs()
    job: Job[int] = jobs.start("calibrate", "two halves", lambda j: j.progress(0.5) or 42,
                               on_done=lambda r: seen.append((jobs.log[0].status, r)))  # fmt: skip
    assert job.wait(10)
    assert job.status == "done" and job.result == 42 and job.fraction == 1.0
    assert seen == [("running", 42)]  # on_done ran before the status turned "done"
    assert job._thread is not None and job._thread is not threading.current_thread()
    assert jobs.log == [job] and jobs.last("calibrate") is job and not jobs.running()


def test_stop_takes_effect_at_the_next_progress_report_and_keeps_nothing() -> None:
    started, release = threading.Event(), threading.Event()
    done: list[object] = []

    def work(job: Job[None]) -> None:
        for step in range(1000):
            started.set()
            release.wait(5)
            job.progress(step / 1000, f"step {step}")

    job = Jobs().start("train", "long", work, on_done=done.append)
    started.wait(5)
    job.stop()
    release.set()
    assert job.wait(10)
    assert job.status == "stopped" and job.text == "step 0" and done == []


def test_a_failure_is_kept_with_its_traceback_and_a_workbench_error_without() -> None:
    def boom(job: Job[None]) -> None:
        raise RuntimeError("boom")

    def bad_input(job: Job[None]) -> None:
        raise WorkbenchError("The data is wrong.", "Give other data.")

    jobs = Jobs()
    failed, refused = jobs.start("convert", "a", boom), jobs.start("export", "b", bad_input)
    assert failed.wait(10) and refused.wait(10)
    assert failed.status == "failed" and str(failed.error) == "boom"
    assert failed.details.startswith("Traceback") and "RuntimeError: boom" in failed.details
    assert refused.status == "failed" and refused.details == ""
    assert isinstance(refused.error, WorkbenchError)


def test_a_job_ended_by_a_base_exception_ends_failed(monkeypatch: pytest.MonkeyPatch) -> None:
    """SystemExit and the like still end the job (the page would show it running forever)."""
    monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the thread re-raises it

    def leaves(job: Job[None]) -> None:
        raise SystemExit(3)

    job = Jobs().start("convert", "a", leaves)
    assert job.wait(10)
    assert job.status == "failed" and str(job.error) == "SystemExit: 3"
    assert "SystemExit: 3" in job.details


def test_the_app_config_keeps_job_threads_running() -> None:
    """Streamlit's default gc.collect(2) after every script run (fragments included) starved
    job threads while a page polled: a digits conversion took over 180 s instead of 5 s."""
    import tomllib

    config = tomllib.loads((Path(__file__).parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False


def test_a_second_job_of_a_kind_stops_the_first_and_starts_once_it_has() -> None:
    order: list[str] = []
    release = threading.Event()

    def first(job: Job[None]) -> None:
        while True:
            release.wait(0.01)
            job.progress(0.1)

    def second(job: Job[None]) -> None:
        order.append("second")

    jobs = Jobs()
    one = jobs.start("calibrate", "first", first)
    other = jobs.start("latency", "another kind", lambda j: order.append("other"))
    two = jobs.start("calibrate", "second", second)
    assert two.wait(10) and one.wait(10) and other.wait(10)
    assert one.status == "stopped" and two.status == "done" and other.status == "done"
    assert two.after == (one,) and other.after == ()
    assert [j.label for j in jobs.log] == ["first", "another kind", "second"]


def test_defaults_keep_calibration_near_fifteen_seconds_and_batches_short() -> None:
    # A heavy model: 50 ms a sample, 500 nodes.
    heavy = Costs(fixed=0.01, per_sample=0.05, nodes=500, parameters=25_000_000, example_batch=1)
    defaults = choose_defaults(heavy, train_size=512, eval_size=256)

    def per_batch(size: int) -> float:
        return heavy.calibrate(1, size) - heavy.prepare()

    # The largest power-of-two share of 64 whose batch takes at most 1.5 s: here 4.
    assert defaults.batch_size == 4 and per_batch(4) <= 1.5 < per_batch(8)
    assert 10 <= heavy.calibrate(defaults.calibration_batches, defaults.batch_size) <= 20
    assert defaults.eval_samples == 32  # 8 s of float + int8 evaluation at 0.2 s a sample
    # A tiny model: the usual 16 batches of 64 and the whole evaluation split.
    tiny = Costs(fixed=0.001, per_sample=1e-5, nodes=45, parameters=10_000, example_batch=4)
    assert choose_defaults(tiny, train_size=1437, eval_size=360) == Defaults(64, 16, None)
    assert choose_defaults(tiny, train_size=20).batch_size == 20  # not more than the data


def test_estimates_learn_from_the_last_job_of_their_kind() -> None:
    estimates = Estimates(Costs(0.0, 0.01, 10, 100, 1))
    assert estimates.seconds("convert", 10.0) == 10.0
    estimates.learn("convert", predicted=10.0, took=25.0)
    assert estimates.seconds("convert", 4.0) == 10.0 and estimates.seconds("export", 4.0) == 4.0
    assert [about(s) for s in (0.4, 41.6, 200, 9000)] == [
        "about 1 s", "about 42 s", "about 3 min", "about 2.5 h"
    ]  # fmt: skip


def test_costs_measure_a_forward_pass_at_two_batches() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 8))
    costs = Costs.measure(model, ModelInputs.of(torch.rand(8, 64)), nodes=5, dynamic_batch=True)
    assert costs.parameters == 64 * 256 + 256 + 256 * 8 + 8 and costs.example_batch == 8
    assert costs.per_sample >= 0 and costs.fixed >= 0 and costs.forward(32) > 0


def _tensor_data(count: int) -> TensorDataset:
    inputs = ModelInputs.of(torch.arange(count, dtype=torch.float32).reshape(count, 1))
    targets = torch.zeros(count, dtype=torch.long)
    return TensorDataset("t", Task(), inputs, targets, inputs, targets)


def test_limited_data_evaluates_on_exactly_the_first_samples() -> None:
    data = _tensor_data(100)
    limited = data.limited(70)
    sizes = [b.size for b in limited.eval_batches(32)]
    assert sizes == [32, 32, 6] and limited.eval_size == 70 and data.eval_size == 100
    assert limited.identity == "t (eval 70)" and data.identity == "t"
    assert limited.with_task(Task()).eval_size == 70  # a new task keeps the limit
    assert data.limited(1000).eval_size == 100 and data.limited(None).identity == "t"


def test_limited_stream_stops_at_the_batch_that_reaches_the_limit(tmp_path: Path) -> None:
    from workbench.model.signature import InputSignature

    source = tmp_path / "stream.py"
    source.write_text(
        "import torch\n"
        "def batches(split):\n"
        "    for i in range(6):\n"
        "        yield torch.rand(4, 3), torch.zeros(4, dtype=torch.long)\n"
    )
    signature = InputSignature(ModelInputs.of(torch.rand(2, 3)), ("x",), {("x", 0): None})
    data = load_data(f"{source}:batches", signature).limited(10)
    assert [b.size for b in data.eval_batches()] == [4, 4, 4]
    assert data.eval_size is None  # a stream's size is known once a pass has counted it


def test_a_recipe_changed_by_another_tab_is_not_overwritten(tmp_path: Path) -> None:
    workspace = Workspace(tmp_path)
    mine, theirs = Recipe(), Recipe(mode="qat")
    seen = workspace.recipe_text("m")
    assert seen is None
    assert workspace.save_recipe_unless_changed("m", mine, seen) is None
    seen = workspace.recipe_text("m")
    workspace.save_recipe("m", theirs)  # another tab
    assert workspace.save_recipe_unless_changed("m", Recipe(backend="xnnpack"), seen) == (
        theirs.to_json()
    )
    assert workspace.load_recipe("m") == theirs  # nothing overwritten
    assert workspace.save_recipe_unless_changed("m", theirs, seen) is None  # the same: fine


def test_each_session_builds_in_its_own_folder_and_keeps_only_its_last_build(
    tmp_path: Path,
) -> None:
    workspace = Workspace(tmp_path)
    first = workspace.build_folder("session-a", "build1")
    (first / "model.pt2").write_bytes(b"a1")
    other = workspace.build_folder("session-b", "build1")
    (other / "model.pt2").write_bytes(b"b1")
    second = workspace.build_folder("session-a", "build2")
    assert second.parent == first.parent and not first.exists()
    assert (other / "model.pt2").read_bytes() == b"b1"  # another session's build stays
    assert sorted(p.name for p in (tmp_path / "exports").iterdir()) == ["session_a", "session_b"]


@pytest.mark.parametrize("bad", [0, -3])
def test_the_cli_refuses_a_bad_eval_size(bad: int, tmp_path: Path) -> None:
    from workbench.cli import main

    code = main(["quantize", "--model", "sample:digits_cnn", "--steps", "1",
                 "--eval-samples", str(bad), "--out", str(tmp_path / "m.pt2")])  # fmt: skip
    assert code == 2 and not (tmp_path / "m.pt2").exists()


def test_the_cli_evaluates_on_the_first_samples_it_is_told(tmp_path: Path) -> None:
    import json

    from workbench.cli import main

    code = main(["quantize", "--model", "sample:digits_cnn", "--steps", "1", "--eval-samples",
                 "100", "--out", str(tmp_path / "m.pt2"), "--report", str(tmp_path / "r.json"),
                 "--quiet"])  # fmt: skip
    assert code == 0
    quality = json.loads((tmp_path / "r.json").read_text())["quality"]
    assert quality["eval_samples"] == 100 and quality["data"] == "digits"


def test_the_export_lock_serves_a_waiting_thread_before_the_releasing_one() -> None:
    """A thread that releases the lock and asks again at once (the pattern-cache warm-up,
    export after export) goes behind the threads already waiting, in the order they asked."""
    from workbench.locks import FairRLock

    lock = FairRLock()
    got: list[str] = []

    def later(name: str) -> None:
        with lock:
            got.append(name)

    with lock, lock:  # reentrant
        waiting = [threading.Thread(target=later, args=(n,)) for n in ("first", "second")]
        for thread in waiting:
            thread.start()
            time.sleep(0.2)  # it is queued before the next one asks
    with lock:
        got.append("again")
    for thread in waiting:
        thread.join(10)
    assert got == ["first", "second", "again"]


def test_background_work_waits_for_the_export_lock_to_be_idle() -> None:
    """`when_idle` (the pattern-cache warm-up) takes the lock only after nobody has used it
    for the idle time: work that takes it step after step (a QAT run) keeps it waiting."""
    from workbench.locks import FairRLock

    lock = FairRLock()
    order: list[str] = []
    busy = threading.Event()

    def steps() -> None:
        for _ in range(10):  # 10 steps, 0.05 s apart: never idle for 0.3 s
            with lock:
                time.sleep(0.01)
            time.sleep(0.05)
        order.append("steps done")
        busy.set()

    def background() -> None:
        with lock.when_idle(0.3, poll=0.01):
            order.append("background")

    worker = threading.Thread(target=steps)
    worker.start()
    time.sleep(0.02)
    waiter = threading.Thread(target=background)
    waiter.start()
    worker.join(10)
    waiter.join(10)
    assert busy.is_set() and order == ["steps done", "background"]
    with lock:  # released after the background work
        pass
