"""Model zoo speeds (README): PyTorch eager fp32 and OpenVINO int8 at batch 1 for widths 16/32/64, one run."""

import json
import sys
import tempfile

from polypseg.apps.benchmark import BenchmarkCase, _row, _run_case
from polypseg.model import UNet


def main() -> None:
    """Measure and write the JSON (path: first argument)."""
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for width in (16, 32, 64):
            for backend, precision, cl in (("torch", "32", False), ("openvino", "int8", True)):
                r = _run_case(BenchmarkCase("infer", backend, precision, width, 1, cl), work, 4.0)
                print(_row(r), flush=True)
                rows.append(
                    {
                        "width": width,
                        "backend": backend,
                        "precision": precision,
                        "params": sum(p.numel() for p in UNet(3, 3, width).parameters()),
                        "images_per_second": r.images_per_second,
                        "error": r.error,
                    }
                )
    json.dump(rows, open(sys.argv[1] if len(sys.argv) > 1 else "zoo-speed.json", "w"), indent=1)


if __name__ == "__main__":
    main()
