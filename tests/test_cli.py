"""`python -m workbench inspect` as a user runs it: real subprocesses, exit codes, stderr text.

The commands are independent processes, so one fixture runs them all up front on a pool of
one worker per core; the tests then check the recorded exit codes and output.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

# Every command here runs in its own interpreter (a torch import each): whole suite only.
pytestmark = pytest.mark.slow

BAD_MODELS = Path(__file__).resolve().parent / "models" / "bad_models.py"

# The internal-error path, triggered by replacing the inspect handler with one that crashes.
CRASH = (
    "import sys, workbench.cli as cli\n"
    "def boom(args):\n"
    "    raise RuntimeError('boom')\n"
    "cli._inspect = boom\n"
    "sys.exit(cli.main(sys.argv[1:]))\n"
)


WORKERS = max(2, os.cpu_count() or 2)  # one single-threaded command per core
SLOW = {"json", "dot", "svg", "data_dependent", "wrong_shape", "out_is_dir"}


@dataclass(frozen=True)
class Run:
    returncode: int
    stdout: str
    stderr: str
    out: Path  # the --out target (or where it would have been)


def box_ids(dot: str) -> list[str]:
    return re.findall(r'^\s*"?([^\s"]+)"? \[label=', dot, flags=re.MULTILINE)


def _inspect(*args: str) -> list[str]:
    return [sys.executable, "-m", "workbench", "inspect", *args]


def _commands(files: Path) -> dict[str, tuple[list[str], Path]]:
    """Each case: the command line and its --out path (in a folder of its own)."""
    rand = files / "random.pt2"
    half = files / "half.pt2"
    mlp = f"{BAD_MODELS}:mlp"  # a small model: no sample data to load, quick to export
    cases: dict[str, list[str]] = {
        "json": _inspect("--model", "sample:digits_cnn"),
        "dot": _inspect("--model", mlp, "--format", "dot"),
        "svg": _inspect("--model", mlp, "--format", "svg", "--out", "OUT"),
        "data_dependent": _inspect("--model", f"{BAD_MODELS}:data_dependent", "--out", "OUT"),
        "missing_file": _inspect("--model", str(files / "nowhere.py") + ":build", "--out", "OUT"),
        "wrong_return": _inspect("--model", f"{BAD_MODELS}:returns_int", "--out", "OUT"),
        "corrupt_pt2": _inspect("--model", str(rand), "--out", "OUT"),
        "truncated_pt2": _inspect("--model", str(half), "--out", "OUT"),
        "wrong_shape": _inspect("--model", mlp, "--input-shape", "2,7", "--out", "OUT"),
        "bad_shape_text": _inspect("--model", "sample:digits_cnn", "--input-shape", "abc"),
        "internal": [sys.executable, "-c", CRASH, "inspect", "--model", "sample:digits_cnn"],
        "out_is_dir": _inspect("--model", mlp, "--out", "OUTDIR"),
    }
    commands = {}
    for name, argv in cases.items():
        folder = files / "out" / name
        folder.mkdir(parents=True)
        out = folder / ("result.svg" if name == "svg" else "result.json")
        if "OUTDIR" in argv:
            out = folder / "a_folder"
            out.mkdir()
        argv = [str(out) if a in ("OUT", "OUTDIR") else a for a in argv]
        commands[name] = (argv, out)
    return commands


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, digits_pt2: Path) -> dict[str, Run]:
    files = tmp_path_factory.mktemp("cli")
    data = digits_pt2.read_bytes()
    (files / "half.pt2").write_bytes(data[: len(data) // 2])
    (files / "random.pt2").write_bytes(os.urandom(4096))
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    env["OMP_NUM_THREADS"] = "1"  # several processes share the cores; avoid oversubscription

    def run(item: tuple[str, tuple[list[str], Path]]) -> tuple[str, Run]:
        name, (argv, out) = item
        start = time.perf_counter()
        done = subprocess.run(
            argv, cwd=files, env=env, capture_output=True, text=True, timeout=300, check=False
        )
        seconds[name] = time.perf_counter() - start
        return name, Run(done.returncode, done.stdout, done.stderr, out)

    seconds: dict[str, float] = {}
    # The slow commands (a full capture) first, so the quick ones fill in around them.
    commands = sorted(_commands(files).items(), key=lambda item: item[0] not in SLOW)
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        results = dict(pool.map(run, commands))
    print("\n" + ", ".join(f"{name} {s:.1f} s" for name, s in seconds.items()))
    return results


def test_json(runs: dict[str, Run]) -> None:
    run = runs["json"]
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    doc = json.loads(run.stdout)
    assert doc["model"] == "sample:digits_cnn"
    assert doc["stage"] == "exported"
    assert len(doc["nodes"]) == 45
    for node in doc["nodes"]:
        assert {"name", "op", "target", "module", "module_type", "shape", "dtype"} <= set(node)
    conv = next(n for n in doc["nodes"] if n["name"] == "conv2d")
    assert conv["op"] == "call_function"
    assert conv["target"] == "aten.conv2d.default"
    assert (conv["module"], conv["module_type"]) == ("stem.conv", "Conv2d")
    assert (conv["shape"], conv["dtype"]) == (["batch", 16, 8, 8], "float32")
    x = next(n for n in doc["nodes"] if n["op"] == "placeholder")
    assert (x["name"], x["shape"]) == ("x", ["batch", 1, 8, 8])
    assert isinstance(doc["edges"], list) and len(doc["edges"]) == 41
    assert all(isinstance(e, list) and len(e) == 2 for e in doc["edges"])
    assert ["x", "conv2d"] in doc["edges"]
    assert ["linear", "output"] in doc["edges"]
    assert doc["modules"]["total_nodes"] == 45


def test_dot(runs: dict[str, Run]) -> None:
    run = runs["dot"]
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    assert run.stdout.startswith("digraph exported {\n")
    assert run.stdout.endswith("}\n")
    # Mlp: x -> fc1 (linear) -> act (relu) -> fc2 (linear) -> output, weights folded.
    assert box_ids(run.stdout) == ["x", "linear", "relu", "linear_1", "output"]
    assert (
        "\tx -> linear\n\tlinear -> relu\n\trelu -> linear_1\n\tlinear_1 -> output\n" in run.stdout
    )
    assert "weight 8×4, bias 8" in run.stdout


def test_svg_to_file(runs: dict[str, Run]) -> None:
    run = runs["svg"]
    assert run.returncode == 0, run.stderr
    assert (run.stdout, run.stderr) == ("", "")
    svg = run.out.read_text(encoding="utf-8")
    assert svg.lstrip().startswith("<?xml")
    assert "</svg>" in svg
    assert re.findall(r'<g id="([^"]+)" class="node">', svg) == [
        "x",
        "linear",
        "relu",
        "linear_1",
        "output",
    ]
    assert [p.name for p in run.out.parent.iterdir()] == ["result.svg"]  # no temp file left


BAD_INPUTS = {
    "data_dependent": ["data-dependent control flow", f"{BAD_MODELS}:", "torch.cond"],
    "missing_file": ["No such file", "nowhere.py", "Check the path"],
    "wrong_return": ["returns_int() returned an int.", "Make it return (model, example_inputs)"],
    "corrupt_pt2": ["random.pt2 is not a readable .pt2 archive: it is corrupt or truncated"],
    "truncated_pt2": ["half.pt2 is not a readable .pt2 archive: it is corrupt or truncated"],
    "wrong_shape": ["does not run on its example inputs (x (2, 7) float32)", "--input-shape"],
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_exits_2_with_error_and_fix(runs: dict[str, Run], case: str) -> None:
    run = runs[case]
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert "Traceback" not in run.stderr
    lines = run.stderr.splitlines()
    assert len(lines) == 2, run.stderr  # no torch log noise, only the two lines
    assert lines[0].startswith("error: ")
    assert lines[1].startswith("fix: ")
    for words in BAD_INPUTS[case]:
        assert words in run.stderr
    assert not run.out.exists()
    assert list(run.out.parent.iterdir()) == []  # nothing written, no temp file either


def test_argument_error_exits_2(runs: dict[str, Run]) -> None:
    run = runs["bad_shape_text"]
    assert run.returncode == 2
    assert run.stdout == ""
    assert run.stderr.startswith("usage: python -m workbench inspect")
    assert run.stderr.endswith(
        "python -m workbench inspect: error: argument --input-shape: 'abc' is not a shape; "
        "write sizes separated by commas, e.g. 4,1,8,8\n"
    )
    assert "Traceback" not in run.stderr


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["inspect", "--model", "m.pt2", "--input-shape", "0,3"], "is not a shape of positive"),
        (["inspect", "--input-shape", "4,3"], "the following arguments are required: --model"),
        (["inspect", "--model", "m.pt2", "--format", "png"], "invalid choice: 'png'"),
    ],
)
def test_more_argument_errors_in_process(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # argparse rejects these before the CLI configures logging or imports torch.
    from workbench.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert message in captured.err


def test_internal_error_exits_1_without_traceback(runs: dict[str, Run]) -> None:
    run = runs["internal"]
    assert run.returncode == 1
    assert run.stdout == ""
    assert run.stderr == (
        "internal error: RuntimeError: boom\n"
        "(run again with --debug for the traceback, and please report it)\n"
    )


def test_out_naming_a_folder_is_bad_input(runs: dict[str, Run]) -> None:
    run = runs["out_is_dir"]
    assert run.returncode == 2, run.stderr
    assert run.stdout == ""
    assert run.stderr == f"error: Cannot write {run.out}: it is a folder.\nfix: Give a file name.\n"
    assert list(run.out.iterdir()) == []
    assert [p.name for p in run.out.parent.iterdir()] == ["a_folder"]  # no temp file left
