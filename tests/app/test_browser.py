"""The real app in headless Debian Chromium: graph, click, annotate, table, recipe download."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest

from benchmarks.harness import CHROMIUM

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"

pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian chromium is not installed"),
]


def _choose(page, label: str, option: str) -> None:  # type: ignore[no-untyped-def]
    """Pick an option of a Streamlit selectbox by its label."""
    page.get_by_role("combobox", name=label, exact=True).first.click()
    page.get_by_role("option", name=option, exact=True).click()


def test_click_a_conv_and_keep_it_float(server: str, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    assert page.locator("g.node").count() == 19
    page.screenshot(path=str(ARTIFACTS / "graph_page.png"))

    start = time.perf_counter()
    page.locator('g.node[id="conv2d_1"]').click()
    page.get_by_text("block1.conv1 (Conv2d)").first.wait_for(timeout=30_000)
    click_to_detail = time.perf_counter() - start
    assert "wb-selected" in (page.locator('g.node[id="conv2d_1"]').get_attribute("class") or "")
    page.get_by_text("backend defaults").first.wait_for()

    _choose(page, "Keep float", "yes")
    page.get_by_role("button", name="Apply").click()
    page.get_by_text("keep float", exact=False).filter(has_text="Annotation").first.wait_for(
        timeout=30_000
    )
    page.get_by_text("Colour by").first.wait_for()
    page.get_by_text("annotation", exact=True).click()
    page.wait_for_function(
        """() => {
            const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot &&
                e.shadowRoot.querySelector('g.node[id="conv2d_1"]'));
            const shape = host && host.shadowRoot.querySelector('g.node[id="conv2d_1"] path');
            return shape && shape.getAttribute('fill') === '#9ecae1';
        }""",
        timeout=30_000,
    )
    page.screenshot(path=str(ARTIFACTS / "annotation_editor.png"))

    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("quantizable nodes").first.wait_for(timeout=60_000)
    # The rule list and the table (its accessible grid mirrors the canvas) both show it.
    page.get_by_text("keep_float=True").first.wait_for(timeout=30_000)
    # The grid draws on a canvas; its accessible table holds the visible cells as text.
    keep_float = page.locator(
        'xpath=//tr[td[@aria-colindex="1" and normalize-space()="conv2d_1"]]/td[@aria-colindex="6"]'
    )
    keep_float.wait_for(state="attached", timeout=30_000)
    assert keep_float.text_content() == "true"
    page.screenshot(path=str(ARTIFACTS / "recipe_page.png"))
    with page.expect_download() as download:
        page.get_by_role("button", name="Download recipe.json").click()
    target = tmp_path / "recipe.json"
    download.value.save_as(target)
    assert json.loads(target.read_text())["overrides"] == [
        {"match": {"node": "conv2d_1"}, "set": {"keep_float": True}}
    ]
    # An upload that names a node the model does not have is refused with the closest names.
    bad = tmp_path / "bad.json"
    bad.write_text('{"overrides": [{"match": {"node": "conv2d_11"}, "set": {"keep_float": true}}]}')
    page.locator('[data-testid="stFileUploaderDropzoneInput"]').set_input_files(str(bad))
    page.get_by_role("button", name="Use uploaded recipe").click()
    page.get_by_text("node 'conv2d_11' (closest: conv2d_1").first.wait_for(timeout=30_000)
    page.get_by_text("keep_float=True").first.wait_for()  # the recipe in use is unchanged
    (ARTIFACTS / "timings.txt").write_text(
        f"click to node detail in browser: {click_to_detail:.3f} s\n"
    )


def test_diff_page_highlights_a_fused_group_on_both_sides(server: str, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("No rules yet").wait_for(timeout=60_000)
    _choose(page, "Mode", "qat")
    _recipe_is(page, "QAT with x86")
    page.get_by_role("link", name="Diff").click()
    # Nothing converted yet: the page offers the conversion (QAT with the defaults) as a job.
    page.get_by_role("button", name=re.compile(r"^120 steps of 64 from digits, then convert")
                     ).click()  # fmt: skip
    removed = page.locator('g.node[id="batch_norm_5"]')
    removed.wait_for(timeout=180_000)
    page.locator('g.node[id="conv2d_8"]').wait_for(timeout=60_000)
    removed.dispatch_event("click")  # it may lie outside the visible part of its frame
    page.locator('g.node.wb-selected[id="conv2d_8"]').wait_for(timeout=30_000)
    assert "wb-selected" in (removed.get_attribute("class") or "")
    for name in ("conv2d_5", "mul_1"):  # the fusion's conv and weight scaling, before
        assert "wb-match" in (page.locator(f'g.node[id="{name}"]').get_attribute("class") or "")
    assert "wb-match" in (
        page.locator('g.node[id="dequantize_per_channel_1"]').get_attribute("class") or ""
    )
    page.get_by_text("Group conv2d_1").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "diff_page.png"))


# Polls the Training loss chart every 20 ms and records how many steps it shows, so a test can
# see the charts redrawn while training runs (plotly keeps its data on the plot element).
_WATCH_LOSS = """() => {
    window.__lossLengths = [];
    window.__watch = setInterval(() => {
        for (const plot of document.querySelectorAll('.js-plotly-plot')) {
            const title = (plot.layout && plot.layout.title && plot.layout.title.text) || '';
            if (title.includes('Training loss') && plot.data && plot.data[0]) {
                window.__lossLengths.push(plot.data[0].x.length);
            }
        }
    }, 20);
}"""

_TRACE_NAMES = """(title) => {
    const plot = [...document.querySelectorAll('.js-plotly-plot')].find(
        (p) => ((p.layout && p.layout.title && p.layout.title.text) || '').includes(title));
    return plot ? plot.data.map((t) => t.name) : null;
}"""


# True once each node id drawn in the graph component has one of its wanted fills (the SVG is
# in the component's shadow root; the first id finds the component).
_FILLS_ARE = """(wanted) => {
    const ids = Object.keys(wanted);
    const host = [...document.querySelectorAll('*')].find(e => e.shadowRoot &&
        e.shadowRoot.querySelector('g.node[id="' + ids[0] + '"]'));
    const fill = (id) => host && host.shadowRoot.querySelector(
        'g.node[id="' + id + '"] path')?.getAttribute('fill');
    return ids.every((id) => wanted[id].includes(fill(id)));
}"""


def _wait_for_fills(page, wanted: dict[str, list[str]]) -> None:  # type: ignore[no-untyped-def]
    """Wait until the graph's nodes are recoloured: each id in one of its wanted fills."""
    page.wait_for_function(_FILLS_ARE, arg=wanted, timeout=30_000)


def _steps_done(page) -> tuple[int, int, str]:  # type: ignore[no-untyped-def]
    """(steps run, steps planned, state suffix) from the run caption "N of M steps, ... s"."""
    text = page.get_by_text(re.compile(r"^\d+ of \d+ steps")).first.text_content() or ""
    done, total = re.match(r"(\d+) of (\d+) steps", text).groups()  # type: ignore[union-attr]
    return int(done), int(total), text


def _open_train_page_in_qat(page) -> None:  # type: ignore[no-untyped-def]
    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("quantizable nodes").first.wait_for(timeout=60_000)
    _choose(page, "Mode", "qat")
    _recipe_is(page, "QAT with x86")
    page.get_by_role("link", name="Train & convert").click()
    page.get_by_role("button", name="Start").wait_for(timeout=60_000)


def _recipe_is(page, text: str) -> None:  # type: ignore[no-untyped-def]
    """Wait until the server has applied a recipe change (the sidebar's recipe line)."""
    page.get_by_test_id("stSidebar").get_by_text(re.compile(f"recipe: {re.escape(text)}")).wait_for(
        timeout=60_000
    )


def _set_number(page, label: str, value: int) -> None:  # type: ignore[no-untyped-def]
    """Type a number and commit it (Enter): the next click sends it with its rerun."""
    box = page.get_by_label(label, exact=True)
    box.fill(str(value))
    box.press("Enter")


def _sidebar_stop(page) -> None:  # type: ignore[no-untyped-def]
    """Click the running job's Stop in the sidebar."""
    page.get_by_test_id("stSidebar").get_by_role("button", name="Stop", exact=True).click()


def test_stop_keeps_the_run_and_resume_continues(server: str, page) -> None:  # type: ignore[no-untyped-def]
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    _open_train_page_in_qat(page)
    _set_number(page, "Steps", 20_000)
    _set_number(page, "Evaluate every", 1_000)
    page.evaluate(_WATCH_LOSS)
    page.get_by_role("button", name="Start").click()
    page.wait_for_function(
        "() => window.__lossLengths.some((n) => n >= 30)", timeout=120_000, polling=100
    )
    _sidebar_stop(page)
    page.get_by_text("(stopped)").first.wait_for(timeout=30_000)
    # The page's last script run is complete once the note under the charts is drawn; read
    # the steps only then (a loaded machine may still be drawing the stopped run).
    note = page.get_by_text(re.compile(r"^the last state \(step \d+\)$"))  # Convert's choice
    try:
        note.wait_for(timeout=60_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "train_stopped.png"), full_page=True)
    page.wait_for_timeout(2_000)  # nothing trains while stopped
    stopped, total, _ = _steps_done(page)
    assert total == 20_000 and 30 <= stopped < total
    assert note.text_content() == f"the last state (step {stopped})"

    page.get_by_role("button", name="Resume").click()
    page.get_by_text("(training…)").first.wait_for(timeout=30_000)
    page.wait_for_function(
        f"() => window.__lossLengths.some((n) => n > {stopped + 30})", timeout=120_000,
        polling=100,
    )  # fmt: skip
    _sidebar_stop(page)
    page.get_by_text("(stopped)").first.wait_for(timeout=30_000)
    resumed, _, _ = _steps_done(page)
    assert stopped + 30 < resumed < total


def test_whole_journey_annotate_train_convert_sqnr_export(  # type: ignore[no-untyped-def]
    app_server: tuple[str, Path], page, tmp_path: Path
) -> None:
    """Load the sample, keep one node float, QAT 300 steps watching the charts, convert, colour
    the graph by SQNR, export, and check the downloaded .pt2 against the app's own model."""
    import torch

    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import convert, exported_stage, prepare
    from workbench.stages.training import QatConfig, QatRun

    url, workspace = app_server
    page.set_viewport_size({"width": 1500, "height": 2400})  # whole pages in the screenshots
    page.goto(url)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    # Annotate: keep the classifier float (found by search, which centres it).
    search = page.get_by_label("Search", exact=True)
    search.fill("linear")
    search.press("Enter")
    page.locator('g.node.wb-match[id="linear"]').wait_for(timeout=30_000)
    page.wait_for_timeout(500)
    page.locator('g.node[id="linear"]').click()
    page.get_by_text("fc (Linear)").first.wait_for(timeout=30_000)
    _choose(page, "Keep float", "yes")
    page.get_by_role("button", name="Apply").click()
    page.get_by_text("keep float", exact=False).filter(has_text="Annotation").first.wait_for(
        timeout=30_000
    )
    _open_train_page_in_qat(page)

    # QAT with the page's defaults (batches of 64, evaluation every 20) for 300 steps, long
    # enough (about 10 s) for the charts to redraw several times while it trains.
    _set_number(page, "Steps", 300)
    page.evaluate(_WATCH_LOSS)
    page.get_by_role("button", name="Start").click()
    page.get_by_text(re.compile(r"^300 of 300 steps")).first.wait_for(timeout=180_000)
    page.wait_for_timeout(500)
    lengths = page.evaluate("window.__lossLengths")
    partial = sorted({n for n in lengths if 0 < n < 300})
    assert len(partial) >= 2, f"the loss chart was not redrawn during training: {partial}"
    drift = page.evaluate(_TRACE_NAMES, "Quality during QAT")
    assert drift == ["float", "fake-quant", "start / best / last"]
    page.screenshot(path=str(ARTIFACTS / "train_charts.png"), full_page=True)

    # The page's run after training is drawn whole once Convert's state choice is there; a
    # click during the rerun that follows the job's end can be lost.
    page.get_by_text("the last state (step 300)").first.wait_for(timeout=60_000)
    page.wait_for_timeout(1_000)
    page.get_by_role("button", name=re.compile(r"^Convert")).click()
    page.get_by_text("int8 against float").first.wait_for(timeout=120_000)
    page.wait_for_function(
        f"() => ({_TRACE_NAMES})('Quality during QAT')?.includes('int8 (converted)')",
        timeout=30_000,
    )
    metric = page.locator('[data-testid="stMetric"]').filter(has_text="int8 accuracy").first
    text = metric.text_content() or ""
    int8, float_ = (float(v) for v in re.findall(r"(\d+\.\d+) %", text)[:2])
    assert abs(int8 - float_) <= 0.5, text
    page.get_by_text("Per-node SQNR (worst first)").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "train_converted.png"), full_page=True)

    # The graph coloured by SQNR; a click shows the node's numbers.
    page.get_by_role("link", name="Graph").click()
    page.locator('g.node[id="conv2d"]').wait_for(timeout=60_000)
    page.get_by_text("SQNR", exact=True).click()
    page.get_by_text("not measured").first.wait_for(timeout=30_000)
    _wait_for_fills(page, {"conv2d_1": ["#1a9850", "#91cf60", "#fee08b", "#fc8d59", "#d73027"],
                           "batch_norm_1": ["#eeeeee"]})  # fmt: skip
    page.locator('g.node[id="conv2d_1"]').click()
    page.get_by_text(re.compile(r"SQNR -?\d+\.\d dB")).first.wait_for(timeout=30_000)
    page.get_by_text("(BatchNorm folded in)").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "graph_sqnr.png"))

    # Export the converted model and download it with its recipe.
    page.get_by_role("link", name="Export").click()
    page.get_by_text("The model converted on the Train & convert page").first.wait_for(
        timeout=60_000
    )
    page.get_by_role("button", name="Build model.pt2").click()
    page.get_by_text("bit-equal").first.wait_for(timeout=120_000)
    files = {}
    for name in ("model.pt2", "recipe.json"):
        with page.expect_download() as download:
            page.get_by_role("button", name=name, exact=True).click()
        files[name] = tmp_path / name
        download.value.save_as(files[name])
    page.screenshot(path=str(ARTIFACTS / "export_page.png"), full_page=True)

    # The app's converted model, rebuilt here from the app's own final QAT checkpoint.
    recipe = Recipe.from_json(files["recipe.json"].read_text())
    assert recipe.mode == "qat" and len(recipe.overrides) == 1
    captured = capture("sample:digits_cnn")
    data = load_data("digits", captured.signature)
    config = QatConfig(steps=300, batch_size=64, lr=1e-4)
    checkpoint = workspace / "checkpoints" / "sample_digits_cnn" / "qat-checkpoint.pt"
    run = QatRun.resume(checkpoint, prepare(captured, recipe), data, config,
                        teacher=exported_stage(captured).graph_module)  # fmt: skip
    assert run.done
    in_app = convert(run.stage()).graph_module
    downloaded = torch.export.load(str(files["model.pt2"])).module()
    for batch in data.eval_batches(128):
        assert torch.equal(batch.inputs.call(downloaded), batch.inputs.call(in_app))


def test_hf_resnet_load_calibrate_convert_export(server: str, page, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A transformers ResNet returning a ModelOutput, from its factory file to a .pt2 whose
    outputs equal the same PTQ run made here."""
    import torch

    from workbench.data.datasets import load_data
    from workbench.model.capture import capture
    from workbench.quantization.recipe import Recipe
    from workbench.stages.steps import calibrate, call, convert, prepare

    spec = str(ROOT / "tests" / "models" / "hf_models.py") + ":resnet"
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    page.get_by_role("link", name="Model").click()
    page.get_by_text("Python file").click()
    page.get_by_role("textbox", name="Spec").fill(spec)
    page.get_by_role("textbox", name="Spec").press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Load", exact=True).click()
    try:
        page.get_by_text(f"Loaded: {spec}").wait_for(timeout=120_000)
    finally:
        page.screenshot(path=str(ARTIFACTS / "hf_resnet_model.png"), full_page=True)
    page.get_by_text("outputs logits").first.wait_for(timeout=30_000)

    page.get_by_role("link", name="Train & convert").click()
    page.get_by_role("button", name="Calibrate").click()
    page.get_by_text("calibrate: 16 batches of 64 from random").first.wait_for(timeout=120_000)
    page.get_by_role("button", name=re.compile(r"^Convert")).click()
    page.get_by_text("int8 agreement").first.wait_for(timeout=120_000)
    page.screenshot(path=str(ARTIFACTS / "hf_resnet_train.png"), full_page=True)

    page.get_by_role("link", name="Export").click()
    page.get_by_text("The model converted on the Train & convert page").first.wait_for(
        timeout=60_000
    )
    page.get_by_role("button", name="Build model.pt2").click()
    page.get_by_text("bit-equal").first.wait_for(timeout=120_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="model.pt2", exact=True).click()
    target = tmp_path / "model.pt2"
    download.value.save_as(target)
    page.screenshot(path=str(ARTIFACTS / "hf_resnet_export.png"), full_page=True)
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("failed unexpectedly").count() == 0

    captured = capture(spec)
    data = load_data("random", captured.signature)
    calibrated = calibrate(prepare(captured, Recipe()), data, batches=16, batch_size=64)
    in_process = convert(calibrated).graph_module
    downloaded = torch.export.load(str(target)).module()
    for batch in data.eval_batches(100):
        got, expected = call(downloaded, batch.inputs), call(in_process, batch.inputs)
        assert type(got).__name__ == "ImageClassifierOutputWithNoAttention"
        assert torch.equal(got.logits, expected.logits)


def test_the_graph_colours_nodes_by_where_the_pte_runs_them(server: str, page) -> None:  # type: ignore[no-untyped-def]
    """xnnpack recipe, convert and build model.pte from the Export page, then the Graph page's
    delegation colours: the convs in the XNNPACK delegate, the flatten on a portable kernel,
    the folded batch norms not in the program."""
    from workbench.drawing.overlays import PLACEMENT_COLOURS

    _open_with_xnnpack(page, server)
    page.get_by_role("link", name="Export").click()
    page.get_by_role("button", name=re.compile("then convert")).click()
    build = page.get_by_role("button", name=re.compile(r"^Build model\.pte"))
    build.wait_for(timeout=180_000)
    build.click()
    page.get_by_text("In the XNNPACK delegate").first.wait_for(timeout=180_000)
    page.get_by_text("38 of 39 ops").first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "export_pte.png"), full_page=True)

    page.get_by_role("link", name="Graph").click()
    page.locator('g.node[id="conv2d"]').wait_for(timeout=60_000)
    page.get_by_text("delegation", exact=True).click()
    page.get_by_text("XNNPACK delegate (12)").first.wait_for(timeout=30_000)
    _wait_for_fills(page, {"conv2d_1": [PLACEMENT_COLOURS["xnnpack"]],
                           "flatten": [PLACEMENT_COLOURS["portable"]],
                           "batch_norm_1": [PLACEMENT_COLOURS["not in program"]]})  # fmt: skip
    page.get_by_text("portable kernels (1)").first.wait_for(timeout=30_000)
    page.locator('g.node[id="flatten"]').dispatch_event("click")  # maybe below the frame's fold
    page.get_by_text("In model.pte:").first.wait_for(timeout=30_000)
    page.get_by_text(re.compile(r"portable kernels: flatten")).first.wait_for(timeout=30_000)
    page.screenshot(path=str(ARTIFACTS / "graph_delegation.png"), full_page=True)


def test_the_mixed_precision_search_to_its_recipe_on_the_graph(server: str, page) -> None:  # type: ignore[no-untyped-def]
    """Train & convert's search from int4 weights and activations (the default to beat) to a
    recipe within 0.5 points of float; adopted, the Graph page shows its node rules."""
    from workbench.drawing.overlays import ANNOTATION_COLOURS

    page.set_viewport_size({"width": 1500, "height": 1800})
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    page.get_by_role("link", name="Train & convert").click()
    search = page.get_by_role("button", name=re.compile(r"^Search mixed precision"))
    search.wait_for(timeout=60_000)
    search.click()
    done = page.get_by_text(re.compile(r"^2 of 13 quantized nodes at a higher precision"))
    done.first.wait_for(timeout=300_000)
    page.get_by_text("What it chose and why").first.click()
    page.get_by_text(re.compile(r"^Chose 2 of 13 quantized nodes")).first.wait_for(timeout=30_000)
    page.locator(".js-plotly-plot").last.scroll_into_view_if_needed()
    page.screenshot(path=str(ARTIFACTS / "train_mixed_precision.png"), full_page=True)
    page.get_by_role("button", name="Use this recipe").click()
    page.get_by_text(re.compile("The recipe is this search's result")).first.wait_for(
        timeout=60_000
    )
    page.get_by_role("link", name="Graph").click()
    page.locator('g.node[id="conv2d"]').wait_for(timeout=60_000)
    page.get_by_text("annotation", exact=True).click()
    override, default = ANNOTATION_COLOURS["override"], ANNOTATION_COLOURS["default"]
    _wait_for_fills(page, {"conv2d": [override], "conv2d_1": [override],
                           "conv2d_2": [default], "linear": [default]})  # fmt: skip
    page.screenshot(path=str(ARTIFACTS / "graph_mixed_precision.png"), full_page=True)


def test_the_diff_between_the_qdq_and_the_reference_forms(server: str, page) -> None:  # type: ignore[no-untyped-def]
    """xnnpack with the reference representation ticked on Train & convert; the Diff page
    compares the q/dq form with the reference form and names the integer ops introduced."""
    _open_with_xnnpack(page, server)
    page.get_by_role("link", name="Train & convert").click()
    page.get_by_role("button", name=re.compile(r"^Calibrate")).wait_for(timeout=60_000)
    page.get_by_text("Reference representation", exact=True).click()
    _recipe_is(page, "PTQ with xnnpack, 0 rules, reference representation")  # applied
    page.get_by_role("link", name="Diff").click()
    page.get_by_role("button", name=re.compile("then convert")).click()
    page.get_by_role("combobox", name="Before", exact=True).wait_for(timeout=180_000)
    _choose(page, "Before", "converted (q/dq)")
    caption = page.get_by_text(re.compile(r"^The reference representation writes"))
    caption.first.wait_for(timeout=120_000)
    text = caption.first.text_content() or ""
    assert "round ×9" in text and "quantize_per_tensor ×10" in text  # introduced, removed
    page.locator("svg g.node").first.wait_for(timeout=60_000)
    page.screenshot(path=str(ARTIFACTS / "diff_reference_representation.png"), full_page=True)


def _open_with_xnnpack(page, server: str) -> None:  # type: ignore[no-untyped-def]
    """The app on a tall page with the recipe's backend set to xnnpack on the Recipe page."""
    page.set_viewport_size({"width": 1500, "height": 1600})
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("quantizable nodes").first.wait_for(timeout=60_000)
    _choose(page, "Backend", "xnnpack")
    _recipe_is(page, "PTQ with xnnpack")


def _load_python_spec(page, spec: str) -> None:  # type: ignore[no-untyped-def]
    page.get_by_role("link", name="Model").click()
    page.get_by_text("Python file").click()
    page.get_by_role("textbox", name="Spec").fill(spec)
    page.get_by_role("textbox", name="Spec").press("Enter")
    page.wait_for_timeout(1000)
    page.get_by_role("button", name="Load", exact=True).click()
    page.get_by_text(f"Loaded: {spec}").wait_for(timeout=120_000)


def _job_log(page) -> list[str]:  # type: ignore[no-untyped-def]
    """The sidebar's job log, one line per job ("kind · label · status · seconds")."""
    log = (
        page.get_by_test_id("stSidebar")
        .get_by_test_id("stExpander")
        .filter(has_text=re.compile(r"Job log \(\d+\)"))
    )
    # While a rerun redraws the sidebar its old elements stay beside the new ones: wait for one.
    page.wait_for_function(
        "() => document.querySelectorAll("
        '\'[data-testid="stSidebar"] [data-testid="stExpander"]\').length === 1',
        timeout=60_000,
    )
    items = log.locator("li")
    if not items.first.is_visible():
        log.get_by_text(re.compile(r"^Job log \(\d+\)$")).click()
    items.first.wait_for(timeout=10_000)
    return [text.strip() for text in items.all_text_contents()]


def test_calibration_survives_page_changes_and_diff_and_export_recompute_nothing(  # type: ignore[no-untyped-def]
    app_server: tuple[str, Path], page, tmp_path: Path
) -> None:
    """An HF ResNet returned as it is (ModelOutput): calibration runs on while the user visits
    two other pages; Convert; Diff and Export start no job of their own (the job log); the
    downloaded .pt2 is the file this session built and equals the in-app model (bit-equal
    reload check)."""
    import torch

    server, workspace = app_server
    spec = str(ROOT / "tests" / "models" / "hf_models.py") + ":resnet"
    page.goto(server)
    page.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
    _load_python_spec(page, spec)
    page.get_by_role("link", name="Train & convert").click()
    _set_number(page, "Calibration batches", 400)
    page.get_by_role("button", name="Calibrate").click()
    sidebar = page.get_by_test_id("stSidebar")
    running = sidebar.get_by_text(re.compile(r"^Calibrate 400 batches of 64: batch \d+/400"))
    running.wait_for(timeout=60_000)
    page.get_by_role("link", name="Graph").click()
    page.locator('g.node[id="conv2d"]').wait_for(timeout=60_000)
    running.wait_for(timeout=10_000)  # still running, shown on this page too
    page.get_by_role("link", name="Recipe").click()
    page.get_by_text("quantizable nodes").first.wait_for(timeout=60_000)
    running.wait_for(timeout=10_000)
    page.screenshot(path=str(ARTIFACTS / "job_in_sidebar.png"), full_page=True)
    page.get_by_role("link", name="Train & convert").click()
    page.get_by_text("calibrate: 400 batches of 64 from random").first.wait_for(timeout=600_000)
    page.get_by_role("button", name=re.compile(r"^Convert")).click()
    page.get_by_text("int8 agreement").first.wait_for(timeout=300_000)

    page.get_by_role("link", name="Diff").click()
    page.get_by_text("the stages of the model converted on Train & convert").wait_for(
        timeout=60_000
    )
    page.locator("g.node").first.wait_for(timeout=60_000)
    log = _job_log(page)
    assert [line.split(" · ")[0] for line in log] == ["calibrate", "convert"], log
    assert all(" · done · " in line for line in log), log

    page.get_by_role("link", name="Export").click()
    page.get_by_role("button", name="Build model.pt2").click()
    page.get_by_text("bit-equal").first.wait_for(timeout=300_000)
    with page.expect_download() as download:
        page.get_by_role("button", name="model.pt2", exact=True).click()
    target = tmp_path / "model.pt2"
    download.value.save_as(target)
    page.screenshot(path=str(ARTIFACTS / "jobs_export.png"), full_page=True)
    log = _job_log(page)
    assert [line.split(" · ")[0] for line in log] == ["calibrate", "convert", "export"], log
    assert page.locator('[data-testid="stException"]').count() == 0
    assert page.get_by_text("failed unexpectedly").count() == 0
    (built,) = (workspace / "exports").glob("*/*/model.pt2")
    assert target.read_bytes() == built.read_bytes()
    # A fresh interpreter needs torchao's quantized ops and the output's pytree type.
    import torchao.quantization.pt2e  # noqa: F401
    import transformers.modeling_outputs  # noqa: F401

    downloaded = torch.export.load(str(target)).module()
    out = downloaded(torch.rand(3, 3, 32, 32))  # captured with positional inputs
    assert type(out).__name__ == "ImageClassifierOutputWithNoAttention"
    assert out.logits.shape == (3, 4)


def test_two_sessions_building_at_once_each_download_their_own_file(  # type: ignore[no-untyped-def]
    app_server: tuple[str, Path], page, tmp_path: Path
) -> None:
    """Two tabs (two sessions) calibrate the same model differently and build at once: each
    downloads the file it built, never the other's."""
    server, workspace = app_server
    tabs = [page, page.context.new_page()]
    for tab, batches in zip(tabs, (1, 5), strict=True):
        tab.goto(server)
        tab.locator('g.node[id="conv2d"]').wait_for(timeout=90_000)
        tab.get_by_role("link", name="Train & convert").click()
        _set_number(tab, "Calibration batches", batches)
        tab.get_by_role("button", name="Calibrate").click()
        tab.get_by_text(f"calibrate: {batches} batches of 64").first.wait_for(timeout=120_000)
        tab.get_by_role("button", name=re.compile(r"^Convert")).click()
        tab.get_by_text("int8 accuracy").first.wait_for(timeout=120_000)
        tab.get_by_role("link", name="Export").click()
        tab.get_by_role("button", name="Build model.pt2").wait_for(timeout=60_000)
    for tab in tabs:  # both builds run at the same time
        tab.get_by_role("button", name="Build model.pt2").click()
    files = []
    for n, tab in enumerate(tabs):
        tab.get_by_text("bit-equal").first.wait_for(timeout=120_000)
        with tab.expect_download() as download:
            tab.get_by_role("button", name="model.pt2", exact=True).click()
        files.append(tmp_path / f"tab{n}.pt2")
        download.value.save_as(files[-1])
    built = sorted((workspace / "exports").glob("*/*/model.pt2"))
    assert len(built) == 2 and built[0].parent.parent != built[1].parent.parent
    mine = [f.read_bytes() for f in files]
    theirs = [b.read_bytes() for b in built]
    assert mine[0] != mine[1]  # different calibrations: different files
    assert sorted(mine) == sorted(theirs)  # each download is one session's own build
