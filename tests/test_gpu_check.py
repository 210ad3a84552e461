"""bench/gpu_check.py without a GPU: the dry run end to end on CPU (tiny Llama, 50 Beauty titles, Ray, a few
training steps), the exit code without CUDA, the planner refusing a model before loading, the budget guard."""

from __future__ import annotations

import re

import pytest
import torch

from bench import gpu_check


def summary(report: str) -> dict[str, tuple[str, str]]:
    """The report's summary table: section -> (status, result)."""
    rows = re.findall(r"^\| ([^|]+) \| ([^|]+) \| [\d.]+ \| (.*) \|$", report, re.M)
    return {name: (status, result) for name, status, result in rows}


def number(pattern: str, text: str) -> float:
    m = re.search(pattern, text)
    assert m, f"{pattern!r} not in {text!r}"
    return float(m.group(1).replace(",", ""))


@pytest.mark.slow
def test_dry_run_reports_every_section(tmp_path, data_dir, capsys):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--dry-run", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    report = out.read_text()
    assert report.startswith("# GPU check (DRY RUN on CPU") and "written to" in capsys.readouterr().out
    rows = summary(report)
    expected = ["setup", "encode bf16", "encode int8", "encode nf4", "ray", "sharding", "dissect", "teacher"]
    expected += ["train ce fp32", "train ce bf16", "train sampled_softmax bf16"]
    assert list(rows) == expected
    for name in ("encode int8", "encode nf4"):  # quantized kernels and cosines need CUDA
        assert rows[name] == ("skipped", "skipped: needs CUDA (bitsandbytes int8 / nf4 kernels)")
    failed = {k: v for k, v in rows.items() if k not in ("encode int8", "encode nf4") and v[0] != "ok"}
    assert not failed, failed
    enc = rows["encode bf16"][1]
    assert number(r"([\d,.]+) items/s", enc) > 0 and number(r"([\d,.]+) tokens/s", enc) > 0
    assert "FLOP fraction n/a" in enc and "peak GPU n/a (CPU)" in enc
    assert number(r"([\d.]+) items/s end to end", rows["ray"][1]) > 0
    assert number(r"min ([\d.]+)", rows["ray"][1] + report.split("## ray")[1]) > 0.999
    shard = rows["sharding"][1]
    assert "'disk'" in shard and "'cpu'" in shard  # the max_memory map really split the model
    assert number(r"cosine to unsharded min ([\d.]+)", shard) > 0.999
    assert "codes agree 1.0000" in rows["teacher"][1]
    for name in expected[-3:]:
        assert number(r"([\d.]+) steps/s", rows[name][1]) > 0
    assert number(r"\| bf16 \| 50 \| ([\d,]+) \|", report) > 50  # tokens of the 50 titles


def test_without_cuda_exits_2_with_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.main([]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no CUDA device" in err[0] and "--dry-run" in err[0]


def test_dry_run_never_writes_the_results_file(capsys):
    assert gpu_check.main(["--dry-run", "--out", str(gpu_check.RESULTS)]) == 2
    assert "never writes bench/results/gpu.md" in capsys.readouterr().err


def test_planner_refuses_a_model_that_does_not_fit_before_loading(tmp_path):
    check = gpu_check.GpuCheck(gpu_check.parse_args(["--dry-run", "--gpu-memory-gib", "16"]), tmp_path)
    check.dataset, check.model_dir = tmp_path, tmp_path / "never-loaded"
    check.n_params = 6_607_343_616  # Llama-2-7B without its LM head: 12.3 GiB in bf16
    sec = check.run("encode bf16", check.encode("none"))
    assert sec.status == "does not fit" and "12.3 GiB of weights" in sec.headline and "int8/nf4" in sec.headline
    assert "none" not in check.encoded


def test_sections_beyond_the_budget_are_skipped(tmp_path):
    out = tmp_path / "gpu.md"
    assert gpu_check.main(["--dry-run", "--budget-s", "0.001", "--out", str(out)]) == 0
    rows = summary(out.read_text())
    assert len(rows) == 11
    assert all(status == "skipped" and "of the budget left" in result for status, result in rows.values())


def test_peak_by_gpu_name():
    names = {
        "NVIDIA H100 80GB HBM3": 989.0,
        "NVIDIA H100 PCIe": 756.0,
        "NVIDIA H200": 989.0,
        "NVIDIA A100-SXM4-80GB": 312.0,
        "NVIDIA L40S": 362.0,
        "NVIDIA L4": 121.0,
        "NVIDIA A10": 125.0,
        "NVIDIA A10G": None,
        "Tesla T4": None,
    }
    assert {n: gpu_check.peak_tflops(n) for n in names} == names
