"""The app as a user sees it, through Streamlit's AppTest (no browser, no JavaScript)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from apptree import graph_payload, graph_payloads
from streamlit.testing.v1 import AppTest

from app_pages.recipe import table_key
from ui.editor import adopt_recipe
from workbench.drawing.overlays import ANNOTATION_COLOURS
from workbench.quantization.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]
APP = str(ROOT / "app.py")


def _open(page: str | None = None) -> AppTest:
    at = AppTest.from_file(APP, default_timeout=180).run()
    assert not at.exception
    if page is not None:
        at.switch_page(f"app_pages/{page}.py").run()
        assert not at.exception
    return at


def _load_pt2(path: Path) -> object:
    """torch.export.load under the export lock, as the app loads: the app's pattern-cache
    warm-up may be tracing in this process, and tracing is not thread-safe."""
    import torch

    from workbench.locks import EXPORT_LOCK

    with EXPORT_LOCK:
        return torch.export.load(str(path)).module()


def _state(at: AppTest):  # type: ignore[no-untyped-def]
    return at.session_state["workbench"]


def _key(at: AppTest, name: str) -> str:
    """A run setting's widget key: settings are per model, so their defaults fit it."""
    return f"{name}-{_state(at).spec}"


def _finish(at: AppTest) -> AppTest:
    """Wait for the session's background jobs, then rerun to draw their results."""
    assert _state(at).jobs.wait(600), "a job did not end in 10 minutes"
    return at.run()


def _click(at: AppTest, key: str) -> AppTest:
    """Click the button `key` (one that starts a job) and wait for the job's result."""
    at.button(key=key).click().run()
    return _finish(at)


def _convert_from_here(at: AppTest) -> AppTest:
    """The Diff or Export page's button: tune with the defaults if needed, then convert."""
    assert any("No model was converted" in i.value for i in at.info)
    return _click(at, "offer-convert")


def test_opens_on_the_graph_of_the_default_sample(workspace: Path) -> None:
    at = _open()
    assert [t.value for t in at.title] == ["Graph · sample:digits_cnn"]
    svg = graph_payload(at)["svg"]
    assert svg.count('class="node"') == 19  # 45 nodes less 26 folded parameters
    for name in ("x", "conv2d", "batch_norm", "add", "linear", "output"):
        assert f'<g id="{name}" class="node">' in svg
    assert json.loads((workspace / "last.json").read_text()) == {"spec": "sample:digits_cnn"}


def test_click_shows_details_and_the_editor_sets_keep_float(workspace: Path) -> None:
    at = _open()
    at.session_state["graph"] = {"clicked": "conv2d_1"}
    at.run()
    assert [s.value for s in at.subheader] == ["conv2d_1"]
    text = " ".join(m.value for m in at.markdown)
    assert "Module `block1.conv1` (Conv2d)" in text
    assert "**Annotation:** backend defaults" in text and "`default`" in text
    assert [c.value for c in at.code] == ["out = self.relu1(self.bn1(self.conv1(x)))"]
    assert graph_payload(at)["selected"] == "conv2d_1"

    at.selectbox(key=None)
    keep = next(s for s in at.selectbox if s.label == "Keep float")
    keep.select("yes")
    next(b for b in at.button if b.label == "Apply").click().run()
    assert not at.exception
    recipe = _state(at).recipe
    assert recipe.as_dict()["overrides"] == [
        {"match": {"node": "conv2d_1"}, "set": {"keep_float": True}}
    ]
    assert "**Annotation:** keep float" in " ".join(m.value for m in at.markdown)
    saved = Recipe.from_json(next((workspace / "recipes").glob("*.json")).read_text())
    assert saved == recipe

    at.radio[0].set_value("annotation").run()
    colours = graph_payload(at)["colors"]
    assert colours["conv2d_1"] == ANNOTATION_COLOURS["float"]
    assert colours["conv2d"] == ANNOTATION_COLOURS["default"]
    assert colours["batch_norm"] == ANNOTATION_COLOURS["not quantized"]  # folded in PTQ


def test_search_highlights_and_centres(workspace: Path) -> None:
    at = _open()
    at.text_input(key="graph-search").input("block1").run()
    data = graph_payload(at)
    assert data["highlight"] == ["conv2d_1", "batch_norm_1", "relu_1", "conv2d_2",
                                 "batch_norm_2", "add", "relu_2"]  # fmt: skip
    assert data["center"] == "conv2d_1"


def test_collapse_depth_draws_modules_as_boxes(workspace: Path) -> None:
    at = _open()
    at.select_slider[0].set_value(1).run()
    svg = graph_payload(at)["svg"]
    assert '<g id="module/block1" class="node">' in svg
    assert '<g id="conv2d_1" class="node">' not in svg


def test_model_page_loads_a_sample_and_keeps_it_on_a_bad_load(workspace: Path) -> None:
    at = _open("model")
    at.selectbox[0].select("attention_mlp").run()
    at.button[0].click().run()
    assert not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric} == {
        "Parameters": "9,482", "Graph nodes": "55", "Export time": at.metric[2].value,
        "Batch": "dynamic",
    }  # fmt: skip
    assert [s.value for s in at.subheader] == ["Loaded: sample:attention_mlp"]
    tree = at.dataframe[0].value
    assert list(tree["module"][:3]) == ["(model)", "  embed", "  block"]

    at.radio[0].set_value("Python file").run()
    at.text_input[0].input("no/such/file.py:build").run()
    at.button[0].click().run()
    assert len(at.error) == 1
    assert "No such file: no/such/file.py" in at.error[0].value
    assert [s.value for s in at.subheader] == ["Loaded: sample:attention_mlp"]
    assert _state(at).spec == "sample:attention_mlp"


def test_recipe_table_edit_becomes_a_node_rule(workspace: Path) -> None:
    at = _open("recipe")
    state = _state(at)
    frame = at.dataframe[0].value
    assert list(frame["node"][:3]) == ["conv2d", "relu", "conv2d_1"]
    assert set(frame["rule"]) == {"default"}
    row = list(frame["node"]).index("linear")
    at.session_state[table_key(state.recipe)] = {
        "edited_rows": {row: {"weight_granularity": "per_tensor"}},
        "added_rows": [], "deleted_rows": [],
    }  # fmt: skip
    at.run()
    assert not at.exception
    recipe = _state(at).recipe
    assert recipe.as_dict()["overrides"] == [
        {"match": {"node": "linear"}, "set": {"weight_granularity": "per_tensor"}}
    ]
    frame = at.dataframe[0].value
    linear = frame[frame["node"] == "linear"].iloc[0]
    assert linear["rule"] == "node:linear" and linear["weight_granularity"] == "per_tensor"
    assert "`node:linear` → weight_granularity=per_tensor" in [m.value for m in at.markdown]


def test_invalid_recipe_upload_is_refused_with_the_validation_message(workspace: Path) -> None:
    at = _open("recipe")
    state = _state(at)
    bad = '{"overrides": [{"match": {"node": "conv2d_11"}, "set": {"keep_float": true}}]}'
    error = adopt_recipe(state, bad, "bad.json")
    assert error is not None
    assert "node 'conv2d_11' (closest: conv2d_1" in error.problem
    assert state.recipe == Recipe()
    assert adopt_recipe(state, "{not json", "broken.json").problem.startswith(
        "broken.json is not valid JSON"
    )
    good = '{"overrides": [{"match": {"op": "linear"}, "set": {"keep_float": true}}]}'
    assert adopt_recipe(state, good, "good.json") is None
    assert state.recipe.overrides[0].label == "op:linear"


def test_recipe_survives_a_new_session(workspace: Path) -> None:
    at = _open()
    state = _state(at)
    from workbench.quantization.editing import set_override
    from workbench.quantization.recipe import QuantSetting

    state.set_recipe(
        set_override(state.recipe, "module", "block2", QuantSetting(observer="minmax"))
    )
    again = _open()  # a refresh, or a server restart, starts a new session
    assert _state(again).recipe == state.recipe
    assert _state(again).notice == "Restored the autosaved recipe (1 rule)."


def _chart_titles(at: AppTest) -> list[str]:
    return [json.loads(c.proto.spec)["layout"]["title"]["text"] for c in at.get("plotly_chart")]


def _open_qat(page: str) -> AppTest:
    """The app with the recipe switched to QAT, on `page`."""
    at = _open()
    state = _state(at)
    state.set_recipe(dataclasses.replace(state.recipe, mode="qat"))
    at.switch_page(f"app_pages/{page}.py").run()
    assert not at.exception
    return at


def test_diff_page_links_a_removed_batch_norm_to_its_fused_group(workspace: Path) -> None:
    at = _convert_from_here(_open_qat("diff"))
    assert [s.value for s in at.selectbox[:2]] == ["prepared", "converted"]
    counts = {m.label: m.value for m in at.metric}
    # the best evaluated state of the default QAT run is converted
    assert counts == {"unchanged": "7", "renamed": "0", "rewritten": "9", "added": "41",
                      "removed": "66"}  # fmt: skip
    at.session_state["diff-before"] = {"clicked": "batch_norm_5"}
    at.run()
    before, after = graph_payloads(at)
    assert before["selected"] == "batch_norm_5"
    assert {"conv2d_5", "mul_1", "batch_norm_5"} <= set(before["highlight"])
    assert after["selected"] == "conv2d_8"
    assert {"conv2d_8", "dequantize_per_channel_1"} <= set(after["highlight"])
    assert at.info[-1].value.startswith("Group **conv2d_1**")


def test_diff_overlay_view(workspace: Path) -> None:
    at = _convert_from_here(_open("diff"))
    next(r for r in at.radio if r.label == "View").set_value("overlay").run()
    assert not at.exception
    (overlay,) = graph_payloads(at)
    svg = overlay["svg"]
    # PTQ prepared -> converted: the 13 observers go (drawn dashed), q/dq pairs come.
    assert svg.count('<g id="before/activation_post_process_') == 13
    assert '<g id="conv2d" class="node">' in svg
    assert '<g id="quantize_per_tensor_default" class="node">' in svg


def test_export_page_builds_a_reload_checked_pt2_that_the_command_reproduces(
    workspace: Path, tmp_path: Path
) -> None:
    import shlex
    import subprocess
    import sys

    import torch

    from workbench.locks import EXPORT_LOCK

    at = _convert_from_here(_open("export"))
    command = at.code[-1].value
    assert command.startswith("python -m workbench quantize --model sample:digits_cnn ")
    assert [job.kind for job in _state(at).jobs.log] == ["convert"]
    _click(at, "export")
    assert not at.exception and not at.error
    (load,) = [c.value for c in at.code if "torch.export.load" in c.value]
    assert load.startswith("import torch\nimport torchao")
    assert 'program = torch.export.load("model.pt2")' in load
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["Reload check"] == "bit-equal"
    assert metrics["Batch"] == "dynamic"
    state = _state(at)
    path = state.exported_build[1].saved.path
    assert path == workspace / "exports" / state.session / state.current().uid / "model.pt2"
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    reloaded = _load_pt2(path)
    in_app = state.stages()["converted"].graph_module
    assert torch.equal(reloaded(x), in_app(x))
    # Model Explorer node data on the same file, keyed by the saved program's node ids
    import io
    import zipfile

    key, zipped = state.explorer_zip
    assert key == state.stages_key()
    archive = zipfile.ZipFile(io.BytesIO(zipped))
    assert sorted(archive.namelist()) == ["annotation.json", "range.json", "sqnr.json"]
    with EXPORT_LOCK:
        names = {n.name for n in torch.export.load(str(path)).graph.nodes}
    sqnr = json.loads(archive.read("sqnr.json"))["graph"]["results"]
    assert len(sqnr) >= 9 and set(sqnr) <= names

    (tmp_path / "recipe.json").write_text(state.recipe.to_json())
    args = shlex.split(command)[1:]
    done = subprocess.run([sys.executable, *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    headless = _load_pt2(tmp_path / "model.pt2")
    assert torch.equal(headless(x), reloaded(x))


def test_train_page_runs_qat_with_live_charts_converts_and_compares(workspace: Path) -> None:
    from workbench.artifacts.report import op_counts
    from workbench.drawing.overlays import sqnr_colours

    at = _open_qat("train")
    for key, value in (("qat-steps", 6), ("qat-batch", 32), ("qat-every", 3), ("qat-bn", 4),
                       ("qat-obs", 5)):  # fmt: skip
        at.number_input(key=_key(at, key) if key in ("qat-steps", "qat-batch") else key).set_value(
            value
        )
    at.run()
    _click(at, "qat-start")
    assert not at.exception and not at.error
    state = _state(at)
    run = state.qat_run
    assert run.done and run.step_count == 6
    assert [r["step"] for r in run.history] == [0, 3, 6]  # the calibrated start first
    assert run.config.freeze_bn_step == 4 and run.config.freeze_observer_step == 5
    assert run.checkpoint_path.is_file()
    # A per-tensor (activation) fake quantizer: its range; a per-channel (weight) one adds
    # its channels.
    activation = next(q for q in run.recorder.quantizers if q.channels == 1)
    at.selectbox(key="qat-quantizer").set_value(activation.name).run()
    assert _chart_titles(at) == ["Training loss", "Quality during QAT",
                                 f"Observed range of {activation.name}"]  # fmt: skip
    weight = next(q for q in run.recorder.quantizers if q.channels > 1)
    at.selectbox(key="qat-quantizer").set_value(weight.name).run()
    assert _chart_titles(at)[2:] == [f"Observed range of {weight.name}",
                                     f"Per-channel range of {weight.name} at step 6"]  # fmt: skip

    _click(at, "convert")
    assert not at.exception and not at.error
    converted = state.converted
    assert converted is state.current()
    ops = op_counts(converted.stages["converted"].graph_module)
    assert "batch_norm" not in ops and ops["dequantize_per_channel"] == 5
    assert set(converted.stages) == {"exported", "prepared", "trained", "converted"}
    comparison = converted.comparison
    assert abs(comparison.int8_quality - run.history[-1]["float"]) <= 1.0
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["int8 accuracy"] == f"{comparison.int8_quality:.2f} %"
    # The drift chart carries the int8 point at the last step.
    drift = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                 if "Quality during QAT" in c.proto.spec)  # fmt: skip
    star = next(t for t in drift["data"] if t["name"] == "int8 (converted)")
    kept = run.best["step"]  # Convert keeps the best evaluated state by default
    assert at.radio(key="qat-keep").value == "best"
    assert star["x"] == [kept] and star["y"] == [comparison.int8_quality]
    marks = next(t for t in drift["data"] if t["name"] == "start / best / last")
    assert marks["x"][0] == 0 and "start" in marks["text"][0]
    assert any("best" in text for text in marks["text"]) and "last" in marks["text"][-1]

    # The Graph page colours by SQNR and shows a clicked node's numbers.
    at.switch_page("app_pages/graph.py").run()
    at.radio(key="graph-colour").set_value("SQNR").run()
    assert not at.exception
    assert graph_payload(at)["colors"] == sqnr_colours(state.view, comparison.errors)
    at.session_state["graph"] = {"clicked": "conv2d_1"}
    at.run()
    error = next(e for e in comparison.errors if e.exported == "conv2d_1")
    text = "\n".join(m.value for m in at.markdown)
    assert f"**SQNR {error.sqnr_db:.1f} dB**" in text
    assert "`batch_norm_1` (BatchNorm folded in)" in text


def test_a_stopped_qat_run_converts_and_the_export_command_reproduces_it(
    workspace: Path, tmp_path: Path
) -> None:
    """Stop at step 5 of 9 (non-default settings), convert, export: the CLI command shown
    rebuilds a bit-identical model, so the page's stopped run is reproducible headless."""
    import shlex
    import subprocess
    import sys

    import torch

    from workbench.stages.steps import exported_stage, prepare
    from workbench.stages.training import QatConfig, QatRun

    at = _open_qat("train")
    state = _state(at)
    config = QatConfig(steps=9, batch_size=16, lr=3e-4, optimizer="sgd", freeze_bn_step=2,
                       freeze_observer_step=3)  # fmt: skip
    run = QatRun(prepare(state.captured, state.recipe), state.data(), config,
                 teacher=exported_stage(state.captured).graph_module, eval_every=0)  # fmt: skip
    for _ in range(5):
        run.step()
    state.qat_run = run
    at.run()
    keep = at.radio(key="qat-keep")
    assert keep.value == "best" and keep.options == ["the best evaluated state (default)",
                                                      "the last state (step 5)"]  # fmt: skip
    keep.set_value("last").run()  # where it stopped (only step 0 was evaluated)
    _click(at, "convert")
    assert not at.exception and not at.error
    assert state.current() is not None and state.schedule().steps == 5
    at.switch_page("app_pages/export.py").run()
    command = at.code[-1].value
    # Freeze steps differ from 60 % / 80 % of the 5 steps run (3, 4): they are spelled out.
    assert " --steps 5 --batch-size 16 --lr 0.0003 --optimizer sgd --freeze-bn-step 2 " \
           "--freeze-observer-step 3 --qat-keep last " in command  # fmt: skip
    _click(at, "export")
    assert not at.exception and not at.error
    saved = _load_pt2(state.exported_build[1].saved.path)
    in_app = state.converted.stages["converted"].graph_module
    x = torch.rand(7, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    assert torch.equal(saved(x), in_app(x))

    (tmp_path / "recipe.json").write_text(state.recipe.to_json())
    done = subprocess.run([sys.executable, *shlex.split(command)[1:]], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600, check=False)  # fmt: skip
    assert done.returncode == 0, done.stderr
    headless = _load_pt2(tmp_path / "model.pt2")
    assert torch.equal(headless(x), in_app(x))


def test_digits_qat_from_the_page_lands_within_half_a_point_of_float(workspace: Path) -> None:
    """The page's defaults (120 steps of 64, Adam 1e-4): int8 within 0.5 pp of the float
    model, and the drift chart shows it."""
    at = _open_qat("train")
    _click(at, "qat-start")
    _click(at, "convert")
    assert not at.exception and not at.error
    comparison = _state(at).converted.comparison
    assert round(comparison.float_quality, 2) == 99.44
    assert abs(comparison.int8_quality - comparison.float_quality) <= 0.5
    drift = next(json.loads(c.proto.spec) for c in at.get("plotly_chart")
                 if "Quality during QAT" in c.proto.spec)  # fmt: skip
    star = next(t for t in drift["data"] if t["name"] == "int8 (converted)")
    best = _state(at).qat_run.best["step"]  # Convert keeps the best evaluated state
    assert star["x"] == [best] and star["y"] == [comparison.int8_quality]
    (reference,) = drift["layout"]["shapes"]
    assert reference["y0"] == comparison.float_quality  # the float model's line


def test_ptq_calibrate_convert_and_inspect_activations_and_weights(workspace: Path) -> None:
    from workbench.analysis.compare import activation_grid, weight_channels

    at = _open("train")
    at.number_input(key=_key(at, "ptq-batches")).set_value(4).run()
    _click(at, "calibrate")
    assert any("calibrate: 4 batches of 64 from digits" in c.value for c in at.caption)
    # What the observers saw, batch by batch: an activation's band, a weight's channels.
    ranges = _state(at).calibrated.tuned.ranges
    assert ranges.count == 4
    at.selectbox(key="ptq-observer").set_value("activation_post_process_2").run()
    assert _chart_titles(at) == ["Observed range of activation_post_process_2"]
    weight = "activation_post_process_3"  # block1.conv1's weight, 16 channels
    at.selectbox(key="ptq-observer").set_value(weight).run()
    assert _chart_titles(at) == [f"Observed range of {weight}",
                                 f"Per-channel range of {weight} at batch 4"]  # fmt: skip
    _click(at, "convert")
    assert not at.exception and not at.error
    state = _state(at)
    converted = state.current()
    assert converted.schedule.steps == 4 and converted.schedule.qat is None
    assert converted.comparison.reference == "float model"
    assert set(converted.stages) == {"exported", "prepared", "calibrated", "converted"}
    # The activation tab opens on the worst quantized output; the weight tab on the first conv.
    errors = converted.comparison.errors
    worst = min((e for e in errors if e.quantized), key=lambda e: e.sqnr_db)
    assert at.selectbox(key="cmp-activation").value == worst.exported
    at.selectbox(key="cmp-activation").set_value("relu_1").run()
    at.selectbox(key="cmp-weight").set_value("conv2d_2").run()
    assert not at.exception
    figures = {t: json.loads(c.proto.spec) for c in at.get("plotly_chart")
               for t in [json.loads(c.proto.spec)["layout"]["title"]["text"]]}  # fmt: skip
    stages = converted.stages
    relu_1 = next(e for e in errors if e.exported == "relu_1")
    grid = activation_grid(stages["exported"].graph_module, stages["converted"].graph_module,
                           relu_1, converted.comparison.inputs)  # fmt: skip
    histogram = next(f for t, f in figures.items() if t.startswith("relu_1: float activations"))
    assert f"scale {grid.scale:.4g}" in histogram["layout"]["title"]["text"]
    weights = weight_channels(stages["converted"].graph_module, "conv2d_2")
    chart = next(f for t, f in figures.items() if t.startswith("int8 weight of conv2d_2"))
    assert chart["data"][0]["base"] == weights.low.tolist()


def test_sensitivity_finds_a_broken_node_and_one_click_keeps_it_float(workspace: Path) -> None:
    from workbench.quantization.editing import set_override
    from workbench.quantization.recipe import QuantSetting

    at = _open()
    state = _state(at)
    broken = QuantSetting(weight_dtype="int4", activation_dtype="int4",  # as test_sensitivity
                          weight_granularity="per_tensor",
                          activation_scheme="symmetric")  # fmt: skip
    state.set_recipe(set_override(state.recipe, "node", "conv2d_1", broken))
    at.switch_page("app_pages/train.py").run()
    at.number_input(key=_key(at, "ptq-batches")).set_value(4).run()
    _click(at, "calibrate")
    _click(at, "convert")
    at.number_input(key="sens-count").set_value(4).run()
    _click(at, "sens-run")
    assert not at.exception and not at.error
    key, progress = state.sensitivity
    assert key == state.work_key()  # the recipe and the data
    assert (progress.done, progress.total) == (5, 5)
    assert progress.results[0].node == "conv2d_1" and progress.results[0].delta > 0
    titles = _chart_titles(at)
    assert any(t.startswith("Gain from keeping one node float") for t in titles)
    next(b for b in at.button if b.label == "Add keep-float rules for the top 1").click().run()
    assert not at.exception
    assert state.recipe.overrides[-1].pattern == "conv2d_1"
    assert state.recipe.overrides[-1].setting == QuantSetting(keep_float=True)
    assert any("Added keep-float rules for conv2d_1" in s.value for s in at.success)
    # The autosaved recipe has the rule too, and the old comparison is marked as stale.
    assert state.workspace.load_recipe(state.spec) == state.recipe
    assert any("The recipe or the data changed since this model was converted" in w.value
               for w in at.warning)  # fmt: skip


def test_mixed_precision_search_from_int4_to_a_recipe_the_graph_shows(workspace: Path) -> None:
    from workbench.quantization.recipe import QuantSetting

    at = _open("train")
    state = _state(at)
    assert at.selectbox(key="mp-start").value == "int4 weights and activations"
    _click(at, "mp-run")
    assert not at.exception and not at.error
    key, result = state.search
    assert key == state.data().identity
    assert result.start.default == QuantSetting(weight_dtype="int4", activation_dtype="int4")
    assert result.met and result.float_quality - result.chosen_quality <= 0.5
    assert 0 < len(result.raised) < 13 / 3
    (box,) = at.success
    assert box.value.startswith(f"{len(result.raised)} of 13 quantized nodes at a higher")
    assert any(t.startswith(f"Mixed precision: {len(result.raised)} of 13") for t in
               _chart_titles(at))  # fmt: skip
    assert state.recipe == Recipe()  # nothing changes until the user adopts it
    at.button(key="mp-use").click().run()
    assert not at.exception
    assert state.recipe == result.chosen
    assert state.workspace.load_recipe(state.spec) == result.chosen
    assert at.button(key="mp-use").disabled
    # On the Graph page coloured by annotation, exactly the raised nodes are overrides.
    at.switch_page("app_pages/graph.py").run()
    at.radio(key="graph-colour").set_value("annotation").run()
    colours = graph_payload(at)["colors"]
    overrides = {n for n, c in colours.items() if c == ANNOTATION_COLOURS["override"]}
    assert overrides == set(result.raised)


def test_a_checkpointed_run_resumes_in_a_new_session_to_the_uninterrupted_result(
    workspace: Path,
) -> None:
    """A run checkpointed at step 5 of 9 (then the server went away) resumes from the page in
    a new session and ends bit-identical to an uninterrupted run."""
    import torch

    from app_pages.train import _checkpoint_folder, _run_meta
    from workbench.stages.steps import exported_stage, prepare
    from workbench.stages.training import QatConfig, QatRun, train_qat

    at = _open_qat("train")
    state = _state(at)
    config = QatConfig(steps=9, batch_size=16, freeze_bn_step=6, freeze_observer_step=7)
    teacher = exported_stage(state.captured).graph_module
    first = QatRun(prepare(state.captured, state.recipe), state.data(), config, teacher=teacher,
                   eval_every=3, checkpoint_dir=_checkpoint_folder(state), checkpoint_every=1,
                   meta=_run_meta(state, 3))  # fmt: skip
    for _ in range(5):
        first.step()

    at = _open("train")  # a new session: the autosaved QAT recipe comes back, the run does not
    state = _state(at)
    assert state.recipe.mode == "qat" and state.qat_run is None
    assert at.button(key="qat-checkpoint").label == "Resume checkpoint (step 5 of 9)"
    _click(at, "qat-checkpoint")
    assert not at.exception and not at.error
    run = state.qat_run
    assert run.done and [r["step"] for r in run.history] == [0, 3, 6, 9]
    expected = train_qat(prepare(state.captured, state.recipe), state.data(), config,
                         teacher=teacher, keep="last").graph_module.state_dict()  # fmt: skip
    got = run.model.state_dict()
    assert expected.keys() == got.keys()
    assert [k for k in expected if not torch.equal(expected[k], got[k])] == []
    # Another recipe does not offer that checkpoint.
    state.set_recipe(dataclasses.replace(state.recipe, backend="xnnpack"))
    state.qat_run = None
    at.run()
    assert not [b for b in at.button if b.label.startswith(("Resume checkpoint", "Load check"))]


def test_export_builds_a_pte_and_the_graph_colours_nodes_by_where_they_run(
    workspace: Path,
) -> None:
    """The default recipe (x86_inductor) is refused with the fix; with xnnpack the Export page
    builds a checked model.pte, and the Graph page colours every node by where it runs."""
    import dataclasses

    import torch

    from workbench.artifacts.pte import load_pte
    from workbench.drawing.overlays import PLACEMENT_COLOURS

    at = _convert_from_here(_open("export"))
    _click(at, "pte")
    assert not at.exception
    (error,) = [e.value for e in at.error]
    assert "The recipe quantizes for x86_inductor, not for XNNPACK" in error
    assert "--backend xnnpack" in error
    assert _state(at).pte_build is None
    assert not list((workspace / "exports").rglob("*.pte"))

    state = _state(at)
    state.set_recipe(dataclasses.replace(state.recipe, backend="xnnpack"))
    at = _click(at.run(), "offer-convert")  # the conversion is out of date: convert again
    _click(at, "pte")
    assert not at.exception and not at.error
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["In the XNNPACK delegate"] == "38 of 39 ops"
    assert metrics["Predictions agree"].endswith(" %")
    (load,) = [c.value for c in at.code if "load_method" in c.value]
    assert 'program = Runtime.get().load_program("model.pte")' in load
    built = state.pte_build[1]
    path = built.pte.saved.path
    assert path == workspace / "exports" / state.session / state.current().uid / "model.pte"
    assert path.with_suffix(".pt2").exists()  # the .pt2 beside it, as Export builds it
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    got = load_pte(path)(x)
    want = state.stages()["converted"].graph_module(x)
    assert torch.equal(got.argmax(-1), want.argmax(-1))
    assert [job.kind for job in state.jobs.log][-1] == "pte"

    at.switch_page("app_pages/graph.py").run()
    at.radio(key="graph-colour").set_value("delegation").run()
    assert not at.exception
    colours = graph_payload(at)["colors"]
    assert colours["conv2d"] == PLACEMENT_COLOURS["xnnpack"]
    assert colours["flatten"] == PLACEMENT_COLOURS["portable"]
    assert colours["batch_norm"] == PLACEMENT_COLOURS["not in program"]
    assert any("38 of the converted graph's 39 op nodes" in c.value for c in at.caption)
    assert any("flatten (flatten)" in c.value for c in at.caption)


def test_the_graph_colours_the_gap_between_any_two_stages(workspace: Path) -> None:
    """Exported against converted, as torchao's numeric debugger pairs nodes, and exported
    against calibrated (observers only: the same numbers, but for the BN-folded convs)."""
    from workbench.drawing.overlays import SQNR_BANDS, db_colours

    at = _convert_from_here(_open("export"))
    at.switch_page("app_pages/graph.py").run()
    at.radio(key="graph-colour").set_value("stage gap").run()
    assert [s.value for s in at.selectbox if s.key in ("gap-reference", "gap-compared")] == [
        "exported", "converted"
    ]  # fmt: skip
    _click(at, "gap")
    assert not at.exception and not at.error
    state = _state(at)
    gap = state.stage_gaps[(state.stages_key(), "exported", "converted")]
    assert graph_payload(at)["colors"] == db_colours(state.view, gap)
    # Where the pairs are the same as the converted model's own per-node SQNR, so are the dB.
    ours = {e.exported: e for e in state.converted.comparison.errors}
    assert gap["linear"] == pytest.approx(ours["linear"].sqnr_db, abs=0.5)
    assert gap["conv2d"] < 10.0 < ours["conv2d"].sqnr_db  # the folded-BN pair (see caption)
    assert any("paired by torchao's numeric debugger" in c.value for c in at.caption)

    at.selectbox(key="gap-compared").set_value("calibrated").run()
    _click(at, "gap")
    gap = state.stage_gaps[(state.stages_key(), "exported", "calibrated")]
    # Observers change no number; prepare folded each BatchNorm into its conv already, so the
    # convs alone differ from the float convs before their BN.
    assert {name for name, db in gap.items() if db < 100} == {
        "conv2d", "conv2d_1", "conv2d_2", "conv2d_3"
    }  # fmt: skip
    colours = graph_payload(at)["colors"]
    assert colours["relu"] == colours["linear"] == SQNR_BANDS[0][2]


def test_export_page_measures_compiled_latency(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The page's latency section (torch.compile's eager backend here;
    tests/analysis/test_latency.py compiles with Inductor)."""
    import functools

    from workbench.analysis import latency

    # The page imports measure_latency from the library on every run: it gets this one.
    monkeypatch.setattr(latency, "measure_latency",
                        functools.partial(latency.measure_latency, backend="eager",
                                          repeats=2, warmup=0))  # fmt: skip
    at = _convert_from_here(_open("export"))
    at.number_input(key="latency-batch").set_value(500).run()  # more than the 360 eval images
    _click(at, "latency")
    assert not at.exception and not at.error
    state = _state(at)
    key, latency = state.latency
    assert key == state.stages_key() and latency.batch == 500 and latency.backend == "eager"
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["int8, compiled"] == f"{latency.int8_ms:.2f} ms"
    assert metrics["int8 speed-up"] == f"{latency.speedup:.2f}x"
    assert any("at batch 500" in c.value for c in at.caption)


def test_the_train_page_uses_the_data_the_user_names(workspace: Path) -> None:
    """A data function file replaces the default digits for calibration, the comparison and
    the export command; a bad spec is an error box and the data in use stays."""
    from tests.models import engine_data

    at = _open("train")
    state = _state(at)
    box = at.text_input(key="data-spec-sample:digits_cnn")
    assert box.value == "digits"
    box.set_value("no_such_file.py:batches").run()
    assert not at.exception
    assert at.error and "no_such_file.py" in at.error[0].value
    assert state.data().spec == "digits"

    spec = f"{engine_data.__file__}:small_batches"
    at.text_input(key="data-spec-sample:digits_cnn").set_value(spec).run()
    assert not at.exception and not at.error
    # Streamed: sizes are unknown until a pass has counted them.
    assert state.data().spec == spec and state.data().train_size is None
    streamed = "? training and ? evaluation samples (streamed; the function's own batches)"
    assert any(c.value.startswith(streamed) for c in at.caption)
    at.number_input(key=_key(at, "ptq-batches")).set_value(2).run()
    _click(at, "calibrate")
    _click(at, "convert")
    assert not at.exception and not at.error
    converted = state.current()
    assert converted.schedule.data_spec == spec
    # Four batches, fewer than five: the last one is the evaluation split.
    assert converted.comparison.inputs.batch_size == 8
    assert any(c.value.startswith("? training and 8 evaluation samples") for c in at.caption)
    at.switch_page("app_pages/export.py").run()
    assert f"--data {spec} --steps 2 " in at.code[-1].value
    # A new session (or a restart) comes back with that data.
    again = _open("train")
    assert _state(again).data().spec == spec
    assert again.text_input(key="data-spec-sample:digits_cnn").value == spec
    # Back to digits: the conversion belongs to the other data.
    at.switch_page("app_pages/train.py").run()
    at.text_input(key="data-spec-sample:digits_cnn").set_value("digits").run()
    assert state.current() is None
    assert any("The recipe or the data changed" in w.value for w in at.warning)


def _details(at: AppTest) -> str:
    """The traceback under the page's one Details expander."""
    (details,) = [e for e in at.expander if e.label == "Details"]
    (code,) = details.code
    return code.value


def test_an_unexpected_convert_failure_is_an_error_box_and_loses_nothing(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in Convert (here RuntimeError) is an error box naming the step with the traceback
    under Details; the recipe (in the session and autosaved) and the calibration stay, and
    Convert works again once the bug is gone."""
    import ui.conversion
    from workbench.quantization.editing import set_override
    from workbench.quantization.recipe import QuantSetting

    at = _open("train")
    state = _state(at)
    state.set_recipe(set_override(state.recipe, "node", "linear", QuantSetting(keep_float=True)))
    recipe = state.recipe
    at.number_input(key=_key(at, "ptq-batches")).set_value(2).run()
    _click(at, "calibrate")
    calibrated = state.calibrated
    assert calibrated is not None

    def broken(stage: object, **options: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(ui.conversion, "convert_forms", broken)
    _click(at, "convert")
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("**Convert failed unexpectedly:** `RuntimeError: boom`")
    assert "The recipe and any trained weights are kept. This is a bug" in error.value
    trace = _details(at)
    assert trace.startswith("Traceback (most recent call last):")
    assert "in work" in trace and trace.endswith("RuntimeError: boom")
    assert state.recipe == recipe and state.recipe.overrides[0].pattern == "linear"
    assert state.workspace.load_recipe(state.spec) == recipe
    assert state.calibrated is calibrated and state.converted is None

    monkeypatch.undo()
    _click(at, "convert")
    assert not at.exception and not at.error
    assert state.current() is not None and state.current().stages["calibrated"] is calibrated.tuned


def test_a_training_step_that_fails_keeps_the_run_and_resume_finishes_it(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from workbench.stages.training import QatRun

    at = _open_qat("train")
    for key, value in (("qat-steps", 6), ("qat-batch", 16), ("qat-every", 3)):
        at.number_input(key=_key(at, key) if key in ("qat-steps", "qat-batch") else key).set_value(
            value
        )
    at.run()
    real = QatRun.step

    def flaky(run: QatRun) -> dict:
        if run.step_count == 4:
            raise RuntimeError("boom at step 5")
        return real(run)

    monkeypatch.setattr(QatRun, "step", flaky)
    _click(at, "qat-start")
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("**Train 6 QAT steps failed unexpectedly:** `RuntimeError: boom")
    state = _state(at)
    run = state.qat_run
    assert run.step_count == 4 and not run.done and [r["step"] for r in run.history] == [0, 3]
    assert state.recipe.mode == "qat" and state.workspace.load_recipe(state.spec) == state.recipe

    monkeypatch.undo()
    _click(at, "qat-resume")
    assert not at.exception and not at.error
    assert state.qat_run is run and run.done and [r["step"] for r in run.history] == [0, 3, 6]


def test_a_missing_graphviz_and_a_failing_page_are_error_boxes(
    workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    import workbench.drawing.dot
    import workbench.graph.view
    from ui.state import svg_for

    at = _open()
    svg_for.clear()  # lay the graph out again, without Graphviz
    monkeypatch.setattr(
        workbench.drawing.dot, "shutil", types.SimpleNamespace(which=lambda _: None)
    )
    at.run()
    assert not at.exception
    assert [e.value for e in at.error] == [
        "**Graphviz 'dot' is not installed, so the graph cannot be laid out.**\n\n"
        "Install it: apt-get install graphviz (Debian/Ubuntu) or brew install graphviz."
    ]
    assert graph_payloads(at) == []
    assert [t.value for t in at.title] == ["Graph · sample:digits_cnn"]  # the page went on
    monkeypatch.undo()
    at.run()
    assert not at.error and graph_payload(at)["svg"].count('class="node"') == 19

    def broken(view: object, query: str) -> list[str]:
        raise KeyError(query)

    monkeypatch.setattr(workbench.graph.view, "search", broken)
    at.text_input(key="graph-search").input("block1").run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("**The Graph page failed unexpectedly:** `KeyError: 'block1'`")
    assert "in <module>" in _details(at)


def test_model_page_loads_a_factory_with_keyword_inputs(workspace: Path) -> None:
    """tests/models/hf_models.py:bert returns (model, {"input_ids": ..., "attention_mask": ...})."""
    spec = f"{ROOT / 'tests' / 'models' / 'hf_models.py'}:bert"
    at = _open("model")
    at.radio[0].set_value("Python file").run()
    next(t for t in at.text_input if t.label == "Spec").input(spec).run()
    at.text_input(key="model-dynamic").input("input_ids:2").run()
    at.button[0].click().run()
    assert not at.exception
    (error,) = at.error
    assert error.value.startswith("**input_ids has 2 dims, so dim 2 cannot be dynamic.**")
    assert _state(at).spec == "sample:digits_cnn"

    at.text_input(key="model-dynamic").input("input_ids:1, attention_mask:1").run()
    at.button[0].click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert {m.label: m.value for m in at.metric} == {
        "Parameters": "23,491", "Graph nodes": "141", "Export time": at.metric[2].value,
        "Batch": "dynamic",
    }  # fmt: skip
    assert [s.value for s in at.subheader] == [f"Loaded: {spec}"]
    assert "Inputs input_ids, attention_mask; dynamic input_ids:0 (batch, 1..4096), " \
           "input_ids:1 (seq, 2..64), attention_mask:0 (batch, 1..4096), attention_mask:1 " \
           "(seq, 2..64); outputs logits." in [c.value for c in at.caption]  # fmt: skip
    captured = _state(at).captured
    assert captured.example_inputs.args == ()
    assert list(captured.example_inputs.kwargs) == ["input_ids", "attention_mask"]

    at.switch_page("app_pages/train.py").run()
    assert not at.exception and not at.error
    output = next(s for s in at.selectbox if s.label == "Prediction output")
    assert output.options == ["(automatic)", "logits"] and output.value == "(automatic)"
    assert any(c.value.endswith("quality is agreement.") for c in at.caption)


def test_the_task_row_sets_the_recipes_output_and_metric(workspace: Path, tmp_path: Path) -> None:
    """A metric function from a file replaces accuracy; a bad one is an error box and the
    recipe stays."""
    metric = tmp_path / "metrics.py"
    metric.write_text("def top1(outputs, batch):\n"
                      "    return (outputs.argmax(-1) == batch[1]).float().mean()\n")  # fmt: skip
    at = _open("train")
    state = _state(at)
    assert any(c.value.endswith("quality is accuracy.") for c in at.caption)
    next(t for t in at.text_input if t.label == "Metric function").input("nope.py:top1").run()
    assert not at.exception
    (error,) = at.error
    assert "nope.py" in error.value
    assert state.recipe == Recipe() and state.workspace.load_recipe(state.spec) is None

    next(t for t in at.text_input if t.label == "Metric function").input(f"{metric}:top1").run()
    next(s for s in at.selectbox if s.label == "Prediction output").select("output").run()
    assert not at.exception and not at.error
    assert (state.recipe.output, state.recipe.metric) == ("output", f"{metric}:top1")
    assert state.workspace.load_recipe(state.spec) == state.recipe
    assert any(c.value.endswith("quality is metric.") for c in at.caption)
    assert next(t for t in at.text_input if t.label == "Metric function").value == f"{metric}:top1"


def test_a_step_lets_st_stop_and_st_rerun_through() -> None:
    def script() -> None:
        import streamlit as st

        from ui.state import step

        runs = st.session_state["runs"] = st.session_state.get("runs", 0) + 1
        with step("Rerun"):
            if runs == 1:
                st.rerun()
        with step("Stop"):
            st.markdown("before stop")
            st.stop()
        st.markdown("after stop")

    at = AppTest.from_function(script).run()
    assert not at.exception and not at.error
    assert at.session_state["runs"] == 2  # st.rerun ran the script again
    assert [m.value for m in at.markdown] == ["before stop"]  # st.stop stopped it


def test_diff_and_export_compute_nothing_on_open_and_offer_the_conversion(
    workspace: Path,
) -> None:
    """Opening Diff or Export starts no job; the button does (with its estimate), and its
    result is the converted model both pages then show."""
    at = _open("diff")
    state = _state(at)
    assert state.jobs.log == [] and state.converted is None
    button = at.button(key="offer-convert")
    assert button.label.startswith("16 calibration batches of 64 from digits, then convert (about")
    at.switch_page("app_pages/export.py").run()
    assert state.jobs.log == [] and not [b for b in at.button if b.label.startswith("Build")]
    _click(at, "offer-convert")
    assert [(j.kind, j.status) for j in state.jobs.log] == [("convert", "done")]
    assert state.current() is not None and state.calibrated is not None
    assert at.button(key="export").label.startswith("Build model.pt2 (about ")
    at.switch_page("app_pages/diff.py").run()
    assert not at.exception and len(graph_payloads(at)) == 2
    assert len(state.jobs.log) == 1  # the Diff page drew the converted stages, ran nothing


def test_a_second_calibration_asks_before_it_stops_the_running_one(workspace: Path) -> None:
    at = _open("train")
    state = _state(at)
    at.number_input(key=_key(at, "ptq-batches")).set_value(5000).run()
    at.button(key="calibrate").click().run()
    (first,) = state.jobs.running("calibrate")
    at.button(key="calibrate").click().run()  # again, while it runs
    assert any(w.value.startswith("A calibration is running") for w in at.warning)
    assert state.jobs.running("calibrate") == [first]  # nothing stopped yet
    at.button(key="confirm-calibrate-no").click().run()
    assert state.jobs.running("calibrate") == [first]
    at.number_input(key=_key(at, "ptq-batches")).set_value(2).run()
    at.button(key="calibrate").click().run()
    at.button(key="confirm-calibrate-yes").click().run()
    _finish(at)
    assert first.status == "stopped" and state.jobs.log[-1].status == "done"
    assert state.calibrated.schedule.steps == 2
    assert not any(i.value.startswith("Calibration stopped") for i in at.info)  # the last won


def test_a_recipe_changed_in_another_tab_is_reported_not_overwritten(workspace: Path) -> None:
    from workbench.quantization.editing import set_override
    from workbench.quantization.recipe import QuantSetting

    mine, theirs = _open("recipe"), _open("recipe")
    theirs_state = _state(theirs)
    theirs_state.set_recipe(set_override(theirs_state.recipe, "node", "linear",
                                         QuantSetting(keep_float=True)))  # fmt: skip
    mine.run()
    assert any("Another tab (or the CLI) changed the autosaved recipe" in w.value
               for w in mine.warning)  # fmt: skip
    state = _state(mine)
    state.set_recipe(Recipe(backend="xnnpack"))  # an edit here does not overwrite theirs
    assert state.workspace.load_recipe(state.spec) == theirs_state.recipe
    mine.run()
    mine.button(key="conflict-theirs").click().run()
    assert state.recipe == theirs_state.recipe and state.recipe_conflict is None
    mine.run()
    assert not any("Another tab" in w.value for w in mine.warning)
