"""Export page: the converted model as a reload-checked .pt2, its recipe and report, an
ExecuTorch .pte (XNNPACK) run and compared in the runtime, and compiled latency on this CPU."""

from __future__ import annotations

import io
import json
import tempfile
import time
import zipfile
from pathlib import Path

import streamlit as st

from ui.conversion import (
    current_pte,
    live_progress,
    offer_conversion,
    pte_estimate,
    start_pte_build,
)
from ui.jobs import live, outcome, rerun_when_ended, start_button
from ui.state import AppState, loaded_state
from workbench.analysis.latency import Latency, eval_batch, measure_latency
from workbench.artifacts.model_explorer import write_node_data
from workbench.artifacts.report import reproduce_command
from workbench.jobs import Job
from workbench.stages.build import BuildResult, export_stages
from workbench.stages.distributed import torchrun_command
from workbench.stages.training import qat_summary


def start_export(state: AppState, predicted: float) -> Job[BuildResult]:
    """Export, save and reload-check the current converted model as a job.

    The file goes to this session's own build folder (Workspace.build_folder), so another
    tab's build never replaces it; the result becomes `state.exported_build`.
    """
    current = state.current()
    assert current is not None and state.captured is not None
    captured, recipe, data, key = state.captured, state.recipe, state.data(), state.stages_key()
    out = state.workspace.build_folder(state.session, current.uid) / "model.pt2"
    began = time.monotonic()

    def work(job: Job[BuildResult]) -> BuildResult:
        job.progress(0.1, "exporting, saving and reloading…")
        built = export_stages(captured, recipe, data, current.stages, out,
                              comparison=current.comparison)  # fmt: skip
        job.progress(0.9, "writing Model Explorer node data…")
        explorer[0] = explorer_zip(built)
        return built

    explorer: list[bytes] = [b""]

    def done(built: BuildResult) -> None:
        state.exported_build = (key, built)
        state.explorer_zip = (key, explorer[0])
        state.learn("export", predicted, time.monotonic() - began)

    return state.jobs.start("export", "Build model.pt2", work, on_done=done,
                            estimate=state.estimate("export", predicted))  # fmt: skip


def explorer_zip(built: BuildResult) -> bytes:
    """The build's per-node numbers as Model Explorer node data (sqnr, range, annotation
    .json) in a zip, keyed by the saved model.pt2's node ids."""
    with tempfile.TemporaryDirectory() as folder:
        paths = write_node_data(Path(folder), built.saved.path,
                                built.stages.converted.graph_module,
                                comparison=built.comparison,
                                effective=built.stages.converted.applied)  # fmt: skip
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in paths:
                archive.write(path, path.name)
    return buffer.getvalue()


def pte_section(state: AppState) -> None:
    """The ExecuTorch .pte with XNNPACK as a job: sizes, delegation, the runtime's gap."""
    st.markdown("**ExecuTorch .pte with XNNPACK** (phones, embedded, CPU servers)")
    st.caption("Lowers the int8 model, and the float one for comparison, with executorch's "
               "XNNPACK partitioner; runs both in the ExecuTorch runtime against their models, "
               "and writes model.pte only once it reloads and runs. The Graph page then colours "
               "each node by where it runs.")  # fmt: skip
    _, estimate = pte_estimate(state)
    start_button(state, "pte", "Build model.pte", lambda: start_pte_build(state),
                 estimate=estimate, key="pte", primary=False)  # fmt: skip
    if state.jobs.running("pte"):
        live_progress(state, "pte")
    outcome(state.jobs.last("pte"))
    built = current_pte(state)
    if built is None or built.pte is None or built.pte.saved is None:
        return
    pte, saved = built.report["pte"], built.pte.saved
    counts, checked = pte["placement_counts"], pte["check"]
    cols = st.columns(4)
    cols[0].metric(".pte size", f"{pte['bytes']:,} B",
                   f"{pte['ratio_to_pt2']:.2f}x the .pt2 · float .pte {pte['float_pte_bytes']:,} B",
                   delta_color="off", delta_arrow="off")  # fmt: skip
    cols[1].metric("In the XNNPACK delegate", f"{counts['xnnpack']} of {sum(counts.values())} ops",
                   f"{pte['delegates']} delegate call(s), {counts['portable']} on portable",
                   delta_color="off", delta_arrow="off")  # fmt: skip
    sqnr_db = "exact" if checked["sqnr_db"] is None else f"{checked['sqnr_db']:.1f} dB"
    cols[2].metric("Runtime against converted", f"max |diff| {checked['max_abs_diff']:.3g}",
                   f"SQNR {sqnr_db}", delta_color="off", delta_arrow="off")  # fmt: skip
    cols[3].metric("Predictions agree", f"{checked['agreement']:.1f} %",
                   f"on {checked['samples']} samples", delta_color="off",
                   delta_arrow="off")  # fmt: skip
    if pte["outside_delegate"]:
        st.caption("Outside the XNNPACK delegate (on ExecuTorch's portable kernels):")
        st.dataframe(pte["outside_delegate"], hide_index=True)
    downloads = st.columns(3)
    downloads[0].download_button("model.pte", saved.path.read_bytes(), "model.pte",
                                 key="download-pte")  # fmt: skip
    downloads[1].download_button("report.json (with .pte)", json.dumps(built.report, indent=2),
                                 "report.json", key="download-pte-report")  # fmt: skip
    st.markdown("**Run model.pte in a plain script** (executorch installed)")
    st.code(pte["load"], language="python")
    st.caption("The headless command under Reproduce, with `--out model.pte`, rebuilds this "
               "file and model.pt2 beside it.")  # fmt: skip


def latency_section(state: AppState) -> None:
    """Compiled int8 against compiled float on this CPU, as a job."""
    st.markdown("**Latency on this CPU** (optional)")
    st.caption("Both models lowered with torch.compile(dynamic=False): Inductor turns the int8 "
               "q/dq graph into int8 kernels. Compiling takes from seconds to a minute; other "
               "sessions' model work waits meanwhile.")  # fmt: skip
    cols = st.columns([1, 2, 3])
    batch = int(cols[0].number_input("Batch", 1, 4096, 256, key="latency-batch"))
    costs = state.estimates.costs if state.estimates is not None else None
    predicted = costs.latency(batch) if costs is not None else 0.0
    with cols[1]:
        start_button(state, "latency", "Measure latency",
                     lambda: start_latency(state, batch, predicted),
                     estimate=state.estimate("latency", predicted), key="latency",
                     primary=False)  # fmt: skip

    ended = rerun_when_ended(state, ("latency",))

    @st.fragment(run_every=live(state, ("latency",)))
    def log() -> None:
        ended()
        job = state.jobs.last("latency")
        if job is not None and job.running:
            st.progress(job.fraction, text=f"{job.text} · {job.elapsed:.0f} s")

    log()
    outcome(state.jobs.last("latency"))
    key, latency = state.latency or ("", None)
    if latency is None or key != state.stages_key():
        return
    cols = st.columns(4)
    cols[0].metric("int8, compiled", f"{latency.int8_ms:.2f} ms",
                   f"eager reference {latency.int8_eager_ms:.1f} ms", delta_color="off",
                   delta_arrow="off")  # fmt: skip
    cols[1].metric("float, compiled", f"{latency.float_ms:.2f} ms",
                   f"eager {latency.float_eager_ms:.1f} ms", delta_color="off",
                   delta_arrow="off")  # fmt: skip
    cols[2].metric("int8 speed-up", f"{latency.speedup:.2f}x")
    cols[3].metric("Compiled int8 vs reference", f"max |diff| {latency.max_abs_diff:.3g}")
    st.caption(f"Median of 20 calls at batch {latency.batch}, {latency.threads} threads; "
               f"compiling both took {latency.compile_seconds:.1f} s.")  # fmt: skip


def start_latency(state: AppState, batch: int, predicted: float) -> Job[Latency]:
    """Compile both models and time them as a job; the result becomes `state.latency`."""
    stages, key = state.stages(), state.stages_key()
    inputs = eval_batch(state.data(), batch)
    began = time.monotonic()
    steps = 0

    def work(job: Job[Latency]) -> Latency:
        def progress(text: str) -> None:
            nonlocal steps
            steps += 1
            job.progress(min(0.95, steps / 6), text)

        return measure_latency(stages["exported"].graph_module, stages["converted"].graph_module,
                               inputs, progress=progress)  # fmt: skip

    def done(latency: Latency) -> None:
        state.latency = (key, latency)
        state.learn("latency", predicted, time.monotonic() - began)

    return state.jobs.start("latency", f"Measure latency at batch {batch}", work, on_done=done,
                            estimate=state.estimate("latency", predicted))  # fmt: skip


# --- the page ---

state = loaded_state()
captured = state.captured
assert captured is not None
st.title(f"Export · {state.spec}")
current = state.current()
schedule = state.schedule()
mode = state.recipe.mode
if current is not None:
    st.caption(f"The model converted on the Train & convert page ({mode.upper()}, "
               f"{schedule.describe(mode)}).")  # fmt: skip
    st.caption("The file is written only after it reloads with torch.export.load and gives "
               "the in-memory model's outputs.")  # fmt: skip
    costs = state.estimates.costs if state.estimates is not None else None
    predicted = costs.export(4 * 128) if costs is not None else 0.0
    start_button(state, "export", "Build model.pt2", lambda: start_export(state, predicted),
                 estimate=state.estimate("export", predicted), key="export")  # fmt: skip
    outcome(state.jobs.last("export"))
else:
    offer_conversion(state)
key, build = state.exported_build or ("", None)
if current is not None and build is not None and key == state.stages_key():
    report, saved = build.report, build.saved
    files, quality, check = report["files"], report["quality"], report["reload_check"]
    unit = "" if quality["metric"] == "mse" else " %"
    cols = st.columns(4)
    cols[0].metric(".pt2 size", f"{files['bytes']:,} B",
                   f"{files['ratio_to_float']:.2f}x float ({files['float_bytes']:,} B)",
                   delta_color="off", delta_arrow="off")  # fmt: skip
    cols[1].metric(f"{quality['metric']} (int8)", f"{quality['quantized']:.2f}{unit}",
                   f"float {quality['float']:.2f}{unit}", delta_color="off",
                   delta_arrow="off")  # fmt: skip
    cols[2].metric("Reload check", "bit-equal" if check["bit_equal"] else "close",
                   f"max |diff| {check['max_abs_diff']:.3g} on {check['batches']} batches",
                   delta_color="off", delta_arrow="off")  # fmt: skip
    cols[3].metric("Batch", "dynamic" if check["dynamic_batch"] else "fixed")
    downloads = st.columns(4)
    downloads[0].download_button("model.pt2", saved.path.read_bytes(), "model.pt2")
    downloads[1].download_button("recipe.json", state.recipe.to_json(), "recipe.json")
    downloads[2].download_button("report.json", json.dumps(report, indent=2), "report.json")
    zipped_key, zipped = state.explorer_zip or ("", b"")
    if zipped and zipped_key == key:
        downloads[3].download_button("Model Explorer node data", zipped,
                                     "model_explorer_node_data.zip", key="download-explorer",
                                     help="SQNR, grid ranges and annotation per node of "
                                     "model.pt2, for Google's Model Explorer (see README, "
                                     "Model Explorer).")  # fmt: skip
    st.caption(f"Built by this browser session only, in {saved.path.parent}.")
    st.markdown("**Load model.pt2 in a plain script** (torchao must be imported first)")
    st.code(report["load"], language="python")
st.markdown("**Reproduce headless**")
assert state.spec is not None
kept = qat_summary(current.stages.tuned.history) if current is not None else None
qat_keep = kept["kept"]["keep"] if kept is not None and kept.get("kept") else "best"
command = reproduce_command(state.spec, "recipe.json", mode, schedule.data_spec, schedule.steps,
                            schedule.batch_size, schedule.qat, captured.requested,
                            eval_samples=schedule.eval_samples, qat_keep=qat_keep)  # fmt: skip
if mode == "qat":
    st.caption("On several processes (DistributedDataParallel: gloo on the CPU, NCCL with "
               "--device cuda; --batch-size is the global batch, each rank trains its share; "
               "rank 0 writes the files and a checkpoint that resumes on one process, here "
               "too):")  # fmt: skip
    st.code(torchrun_command(command, 2), language="bash", wrap_lines=True)
st.code(command, language="bash", wrap_lines=True)
if current is None:
    st.caption("With the defaults the conversion button above would use.")
else:
    st.divider()
    pte_section(state)
    st.divider()
    latency_section(state)
