"""The benchmark's measurement plan, ratios and JSON, without timing anything (the real runs are slow)."""

from __future__ import annotations

import json

import pytest

from polypseg.apps import benchmark
from polypseg.apps.benchmark import BenchmarkCase, BenchmarkResult
from polypseg.deploy.backends import BackendChoice


def test_full_plan_compiles_beside_eager_and_quick_does_not():
    full, quick = benchmark.default_cases(quick=False), benchmark.default_cases(quick=True)
    compiled = [case for case in full if case.compile]
    assert {(case.base_channels, case.batch_size) for case in compiled if case.kind == "infer"} == {
        (width, batch) for width in (64, 32, 16) for batch in (1, 8)
    }
    assert all(case.backend == "torch" and case.precision == "32" and case.channels_last for case in compiled)
    training = [case.label for case in full if case.kind == "train"]
    assert training == ["train torch 32", "train torch 32 compile", "train torch bf16"]
    assert not any(case.compile for case in quick)
    assert BenchmarkCase("infer", "torch", "32", 16, 1, compile=True).label == "torch 32 compile"


def test_ratios_are_to_eager_uncompiled_fp32():
    speeds = {
        BenchmarkCase("infer", "torch", "32", 16, 1, channels_last=False): 10.0,
        BenchmarkCase("infer", "torch", "32", 16, 1, compile=True): 15.0,
        BenchmarkCase("train", "torch", "32", 16, 8): 4.0,
        BenchmarkCase("train", "torch", "32", 16, 8, compile=True): 5.0,
        BenchmarkCase("train", "torch", "bf16", 16, 8): 2.0,
    }
    results = [BenchmarkResult(case, speed, 100.0) for case, speed in speeds.items()]
    benchmark.add_ratios(results)
    assert [result.ratio for result in results] == pytest.approx([1.0, 1.5, 1.0, 1.25, 0.5])


def test_json_lists_the_compile_cases(tmp_path, monkeypatch):
    def fake_run(case, workdir, seconds, isolated=True):
        speed = 2.0 if case.compile else 1.0
        return BenchmarkResult(case, speed, 100.0, extra={"warmup_s": 60.0} if case.compile else {})

    monkeypatch.setattr(benchmark, "_run_case", fake_run)
    monkeypatch.setattr(benchmark, "model_gflops", lambda width, size=256: float(width))
    rows = []
    benchmark.run_benchmark(quick=False, out=tmp_path / "bench.json", progress=rows.append)
    payload = json.loads((tmp_path / "bench.json").read_text())
    by_label = {}
    for entry in payload["results"]:
        by_label.setdefault(entry["label"], []).append(entry)
    assert len(by_label["torch 32 compile"]) == 6 and len(by_label["train torch 32 compile"]) == 1
    for entry in by_label["torch 32 compile"] + by_label["train torch 32 compile"]:
        assert entry["case"]["compile"] is True
        assert entry["ratio"] == pytest.approx(2.0) and entry["extra"]["warmup_s"] == 60.0
    assert any("torch 32 compile" in row for row in rows)


ALL = ["onnxruntime", "openvino", "torch"]

#: Speeds measured on the bf16 CPU (width 64, batch 1), as ratios to PyTorch eager fp32.
MEASURED_BF16_CPU = {
    ("torch", "32", False): 1.0,
    ("torch", "32", True): 1.1,
    ("torch", "bf16", True): 2.06,
    ("onnxruntime", "32", True): 1.31,
    ("openvino", "32", True): 1.39,
    ("openvino", "bf16", True): 2.87,
    ("openvino", "int8", True): 5.27,
}


def fake_results(speeds, shapes=((64, 1), (16, 8))):
    return [
        BenchmarkResult(BenchmarkCase("infer", backend, precision, width, batch, layout), speed, 100.0)
        for width, batch in shapes
        for (backend, precision, layout), speed in speeds.items()
    ]


def test_json_and_header_record_the_cpu_flags(tmp_path, monkeypatch):
    monkeypatch.setattr(
        benchmark, "_run_case", lambda case, workdir, seconds, isolated=True: BenchmarkResult(case, 1.0, 1.0)
    )
    monkeypatch.setattr(benchmark, "model_gflops", lambda width, size=256: float(width))
    results = benchmark.run_benchmark(quick=True, out=tmp_path / "bench.json", progress=lambda row: None)
    machine = json.loads((tmp_path / "bench.json").read_text())["machine"]
    assert {"avx512_bf16", "amx_bf16", "amx_int8", "avx512_vnni"} <= set(machine["cpu_flags"])
    header = benchmark.format_results(results).splitlines()[0]
    assert "avx512_bf16" in header and "amx_bf16" in header and "avx512_vnni" in header and "native bf16" in header


@pytest.mark.parametrize("flag", ["1", "0"])
def test_table_marks_auto_and_says_whether_it_is_within_10_percent(monkeypatch, flag):
    monkeypatch.setattr("polypseg.apps.benchmark_report.installed_backends", lambda: list(ALL))
    monkeypatch.setenv("POLYPSEG_NATIVE_BF16", flag)
    results = fake_results(MEASURED_BF16_CPU)
    table = benchmark.format_results(results)
    marked = {(line.split()[0], " ".join(line.split()[2:4])) for line in table.splitlines() if line.endswith("<- auto")}
    if flag == "1":
        assert marked == {("w64", "openvino bf16"), ("w16", "torch bf16")}
    else:  # fp32: OpenVINO for the full model, ONNX Runtime for the small one
        assert marked == {("w64", "openvino 32"), ("w16", "onnxruntime 32")}
    assert sum(line.endswith("<- auto (int8 export)") for line in table.splitlines()) == 2
    summary = {(entry["base_channels"], entry["batch_size"]): entry for entry in benchmark.auto_summary(results)}
    full = summary[(64, 1)]
    assert full["fastest_case"] == "openvino int8" and full["within_10_percent"] is False
    assert full["int8_export_case"] == "openvino int8" and full["int8_export_within_10_percent"] is True
    # without an int8 export: bf16 (2.87) is the fastest; fp32 OpenVINO (1.39) is far behind it
    assert full["within_10_percent_without_int8"] is (flag == "1")
    assert "NOT within 10%" in table and "auto takes" in table


def test_auto_within_10_percent_is_measured_against_the_same_run():
    speeds = {("torch", "32", False): 1.0, ("openvino", "32", True): 1.87, ("onnxruntime", "32", True): 1.95}
    results = fake_results(speeds, shapes=((64, 1),))
    choices = {
        64: {"weights": BackendChoice("openvino", "32", "x"), "int8_export": BackendChoice("openvino", "32", "x")}
    }
    (entry,) = benchmark.auto_summary(results, choices)
    assert entry["fastest_case"] == "onnxruntime 32" and entry["within_10_percent"] is True  # 1.87 >= 0.9 * 1.95
    results[1].images_per_second = 1.7
    (entry,) = benchmark.auto_summary(results, choices)
    assert entry["within_10_percent"] is False


def test_predict_inputs_are_distinct_files(tmp_path, write_image):
    from polypseg.inference import expand_inputs

    copies = benchmark.predict_inputs(tmp_path / "copies", count=12, source=tmp_path / "missing")
    assert len(copies) == 12 and len(expand_inputs(copies)[0]) == 12 and len({p.name for p in copies}) == 12
    for index in range(10):
        write_image(tmp_path / "real" / f"{index}.jpg", size=(20, 20), seed=index)
    real = benchmark.predict_inputs(tmp_path / "unused", count=4, source=tmp_path / "real")
    assert len(set(real)) == 4 and all(path.parent == tmp_path / "real" for path in real)
    assert not (tmp_path / "unused").exists()


def test_predict_case_divides_by_the_images_it_wrote(tmp_path, monkeypatch, write_image):
    """The old case passed 20 paths (5 files x 4), predict_files segmented 5 and the rate was divided by 20."""
    from polypseg.model import UNet

    inputs = [write_image(tmp_path / "in" / f"{index}.jpg", size=(40, 30), seed=index) for index in range(3)]
    monkeypatch.setattr(benchmark, "predict_inputs", lambda folder: [*inputs, inputs[0], inputs[1]])  # 5 paths, 3 files
    monkeypatch.setattr(benchmark, "load_pretrained", lambda weights=None: UNet(base_channels=4).eval())
    monkeypatch.setattr(benchmark.torch, "set_num_threads", lambda threads: None)  # keep the suite's thread count
    result = benchmark._run_case(BenchmarkCase("predict", "torch", "32", 4, 2), str(tmp_path / "work"), 0.0, False)
    assert result.error is None, result.error
    written = len(list((tmp_path / "work" / "predict").glob("*_mask.png")))
    assert result.extra["images"] == written == 3 and result.extra["inputs"] == 5
    assert result.images_per_second == pytest.approx(result.extra["images"] / result.extra["seconds"])


@pytest.mark.slow
def test_benchmark_measures_side_by_side(tmp_path, monkeypatch):
    from polypseg.apps import benchmark

    cases = [
        benchmark.BenchmarkCase("infer", "torch", "32", 4, 1, channels_last=False),
        benchmark.BenchmarkCase("infer", "torch", "32", 4, 1),
        benchmark.BenchmarkCase("train", "torch", "32", 4, 2),
        benchmark.BenchmarkCase("infer", "nosuchruntime", "32", 4, 1),
    ]
    monkeypatch.setattr(benchmark, "default_cases", lambda quick: cases)
    lines = []
    results = benchmark.run_benchmark(
        quick=True, seconds=0.05, out=tmp_path / "bench.json", progress=lines.append, isolated=False
    )
    assert len(results) == len(lines) == 4
    eager, channels_last, training, broken = results
    assert eager.ratio == pytest.approx(1.0)
    assert channels_last.ratio == pytest.approx(channels_last.images_per_second / eager.images_per_second)
    assert training.ratio == pytest.approx(1.0) and training.gflops_per_second > 0
    assert broken.error and broken.images_per_second is None and "failed" in lines[-1]
    payload = json.loads((tmp_path / "bench.json").read_text())
    assert len(payload["results"]) == 4 and payload["gflops_per_image"]["64"] == pytest.approx(98.75, abs=0.1)
    assert "cpu" in payload["machine"]
