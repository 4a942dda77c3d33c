"""The benchmark's measurement plan, ratios and JSON, without timing anything (the real runs are slow)."""

from __future__ import annotations

import json

import pytest

from polypseg import benchmark
from polypseg.benchmark import BenchmarkCase, BenchmarkResult


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
