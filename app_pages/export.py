"""Export page: the converted model as a reload-checked .pt2, its recipe and report."""

import json

import streamlit as st

from ui.state import loaded_state, step
from workbench.flow import export_stages, reproduce_command
from workbench.latency import eval_batch, measure_latency

state = loaded_state()
captured = state.captured
assert captured is not None
st.title(f"Export · {state.spec}")
schedule = state.schedule()
mode = state.recipe.mode
made = f"{schedule.steps} {'steps' if mode == 'qat' else 'calibration batches'} of " \
       f"{schedule.batch_size} from {schedule.data_spec}"  # fmt: skip
if state.current() is not None:
    st.caption(f"The model converted on the Train & convert page ({mode.upper()}, {made}).")
else:
    st.caption(f"No model was converted with the current recipe on the Train & convert page: "
               f"this is a quick preview ({mode.upper()}, {made}).")  # fmt: skip
st.caption("The file is written only after it reloads with torch.export.load and gives the "
           "in-memory model's outputs.")  # fmt: skip
if st.button("Build model.pt2", type="primary"):
    out = state.workspace.folder / "exports" / "model.pt2"
    out.parent.mkdir(exist_ok=True)
    with step("Build model.pt2"), st.spinner("Converting, exporting, saving and reloading…"):
        built = export_stages(captured, state.recipe, state.data(), state.stages(), out)
        state.exported_build = (state.stages_key(), built)
key, build = state.exported_build or ("", None)
if build is not None and key == state.stages_key():
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
    downloads = st.columns(3)
    downloads[0].download_button("model.pt2", saved.path.read_bytes(), "model.pt2")
    downloads[1].download_button("recipe.json", state.recipe.to_json(), "recipe.json")
    downloads[2].download_button("report.json", json.dumps(report, indent=2), "report.json")
st.markdown("**Reproduce headless**")
assert state.spec is not None
st.code(reproduce_command(state.spec, "recipe.json", mode, schedule.data_spec, schedule.steps,
                          schedule.batch_size, schedule.qat, captured.requested),
        language="bash", wrap_lines=True)  # fmt: skip

st.markdown("**Latency on this CPU** (optional)")
st.caption("Both models lowered with torch.compile(dynamic=False): Inductor turns the int8 "
           "q/dq graph into int8 kernels. Compiling takes from seconds to a minute, and other "
           "sessions wait meanwhile.")  # fmt: skip
cols = st.columns([1, 1, 3])
batch = int(cols[0].number_input("Batch", 1, 4096, 256, key="latency-batch"))
if cols[1].button("Measure latency"):
    status = st.status("Measuring latency…", expanded=True)
    with step("Measure latency") as measuring:
        stages, inputs = state.stages(), eval_batch(state.data(), batch)
        state.latency = (state.stages_key(), measure_latency(
            stages["exported"].graph_module, stages["converted"].graph_module, inputs,
            progress=status.write))  # fmt: skip
    status.update(label="Latency not measured" if measuring.failed else "Latency measured",
                  state="error" if measuring.failed else "complete", expanded=False)  # fmt: skip
key, latency = state.latency or ("", None)
if latency is not None and key == state.stages_key():
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
