"""One cold process: capture, prepare_qat, one forward, convert; run with --bare or --workbench.

Run as a subprocess by the benchmark so that both sides pay imports and an empty cache.
"""

from __future__ import annotations

import argparse
import time

START = time.perf_counter()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("side", choices=("bare", "workbench"))
    parser.add_argument("--model", default="sample:digits_cnn")
    args = parser.parse_args()

    from torchao.quantization.pt2e import move_exported_model_to_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_qat_pt2e

    from workbench.model.capture import capture
    from workbench.quantization.quantizer import base_quantizer

    if args.side == "workbench":
        from workbench.quantization.pattern_cache import install_pattern_cache

        install_pattern_cache()
    captured = capture(args.model)
    prepared = prepare_qat_pt2e(
        captured.graph_module(), base_quantizer("x86_inductor", is_qat=True)
    )
    captured.example_inputs.call(prepared)
    move_exported_model_to_eval(prepared)
    convert_pt2e(prepared)
    print(f"{time.perf_counter() - START:.3f}")


if __name__ == "__main__":
    main()
