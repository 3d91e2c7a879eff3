"""Export page: the converted model as a reload-checked .pt2, its recipe and report."""

import json

import streamlit as st

from ui.conversion import offer_conversion
from ui.exporting import latency_section, start_export
from ui.jobs import outcome, start_button
from ui.state import loaded_state
from workbench.stages.build import reproduce_command

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
    downloads = st.columns(3)
    downloads[0].download_button("model.pt2", saved.path.read_bytes(), "model.pt2")
    downloads[1].download_button("recipe.json", state.recipe.to_json(), "recipe.json")
    downloads[2].download_button("report.json", json.dumps(report, indent=2), "report.json")
    st.caption(f"Built by this browser session only, in {saved.path.parent}.")
st.markdown("**Reproduce headless**")
assert state.spec is not None
st.code(reproduce_command(state.spec, "recipe.json", mode, schedule.data_spec, schedule.steps,
                          schedule.batch_size, schedule.qat, captured.requested,
                          eval_samples=schedule.eval_samples),
        language="bash", wrap_lines=True)  # fmt: skip
if current is None:
    st.caption("With the defaults the conversion button above would use.")
else:
    latency_section(state)
