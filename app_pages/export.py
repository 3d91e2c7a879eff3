"""Export page: the converted model as a reload-checked .pt2, its recipe and report."""

import json

import streamlit as st

from ui.state import loaded_state
from workbench.data import load_data
from workbench.errors import WorkbenchError
from workbench.flow import export_stages, reproduce_command

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
    try:
        with st.spinner("Converting, exporting, saving and reloading…"):
            data = load_data(schedule.data_spec, captured.example_inputs)
            built = export_stages(captured, state.recipe, data, state.stages(), out)
            state.exported_build = (state.stages_key(), built)
    except WorkbenchError as exc:
        st.error(f"**{exc.problem}**\n\n{exc.fix}", icon="🚫")
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
                          schedule.batch_size, schedule.qat),
        language="bash", wrap_lines=True)  # fmt: skip
