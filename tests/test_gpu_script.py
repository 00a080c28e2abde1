"""The GPU run's script on this CPU machine, and the bundle's rewriting of ONNX Runtime's CUDA
library, which must keep the H200's code and the library's layout.

The GPU half of ``benchmarks/gpu.py`` has never run in CI (no GPU here, by design); what is
checked here is that everything around it does what it says: the cases are prepared with the
stage's converters, every variant goes through the stage's gate, the CPU ones are timed and
placed, and the GPU ones are skipped with the reason rather than failing the run.
"""

from __future__ import annotations

import importlib.util
import json
import struct
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _bundle() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "gpu_bundle", ROOT / "benchmarks" / "gpu_bundle.py"
    )
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_gpu_run_on_a_cpu_gates_and_times_the_cpu_variants_and_skips_the_gpu_ones(
    tmp_path: Path,
) -> None:
    script = str(ROOT / "benchmarks" / "gpu.py")
    cases, out = tmp_path / "cases", tmp_path / "out"
    subprocess.run([sys.executable, script, "prepare", str(cases)], check=True, cwd=ROOT,
                   capture_output=True, timeout=300)  # fmt: skip
    assert sorted(p.name for p in cases.iterdir()) == ["forest", "torch_mlp"]
    run = subprocess.run([sys.executable, script, "run", str(cases), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    report = json.loads((out / "gpu.json").read_text())
    results = {(r["case"], r["variant"]): r for r in report["results"]}
    for case in ("forest", "torch_mlp"):
        fp32 = results[case, "fp32"]
        assert fp32["passed"] and fp32["got_providers"] == ["CPUExecutionProvider"]
        assert fp32["timing"]["p50_us"] > 0 and "rows_per_s_16384" in fp32["timing"]
        assert (
            set(fp32["nodes"]) == {"CPUExecutionProvider"}
            and fp32["nodes"]["CPUExecutionProvider"] > 0
        )
        # the gate ran: the stage's equivalence checks and the policy's metrics
        names = {c["name"] for c in fp32["checks"]}
        assert {
            "variant.fp32.labels",
            "variant.fp32.probabilities",
            "variant.fp32.metric.accuracy",
        } <= names
        for gpu in ("cuda", "fp16", "tensorrt"):
            skipped = results[case, gpu]
            assert not skipped["passed"] and "timing" not in skipped
            [check] = skipped["checks"]
            assert check["skipped"] and "is not available (no GPU here)" in check["reason"]
    assert not [v for _, v in results if v.startswith("int8")]  # measured by optimize.py
    table = (out / "gpu.md").read_text()
    assert "| PyTorch MLP 64-256-128-10 (digits) | cuda | skipped:" in table
    assert report["environment"]["providers"][-1] == "CPUExecutionProvider"


def _fatbin(entries: list[tuple[int, bytes]]) -> bytes:
    """A fatbin as the CUDA toolkit lays one out: a 16-byte header, then per entry a 64-byte
    header (kind, flags, header size, payload size, ..., architecture at byte 28) and its payload."""
    body = b""
    for arch, payload in entries:
        header = bytearray(64)
        struct.pack_into("<HHIQ", header, 0, 2, 0x101, 64, len(payload))
        struct.pack_into("<I", header, 28, arch)
        body += bytes(header) + payload
    return struct.pack("<IHHQ", 0xBA55ED50, 1, 16, len(body)) + body


def test_zeroing_keeps_sm90_code_and_every_offset() -> None:
    bundle = _bundle()
    first = _fatbin([(80, b"\x11" * 40), (90, b"\x22" * 24), (120, b"\x33" * 8)])
    second = _fatbin([(90, b"\x44" * 16)])
    section = b"\0" * 8 + first + second  # fatbins sit 8-byte aligned, with padding between
    data = bytearray(b"HEAD" + section + b"TAIL")
    before = bytes(data)
    zeroed, kept = bundle.zero_other_archs(data, 4, 4 + len(section), {90})
    assert (zeroed, kept) == (48, 40)
    assert len(data) == len(before) and data[:4] == b"HEAD" and data[-4:] == b"TAIL"
    assert b"\x22" * 24 in data and b"\x44" * 16 in data  # sm_90 kept, where it was
    assert b"\x11" not in data and b"\x33" not in data  # the other architectures zeroed
    assert data.index(b"\x22" * 24) == before.index(b"\x22" * 24)
    # every header is untouched: the driver still walks the same entries
    magic = struct.pack("<I", 0xBA55ED50)
    assert data.count(magic) == 2 and data.index(magic) == before.index(magic)
    # a layout it does not know is refused, not walked forever or past the section
    broken = bytearray(_fatbin([(80, b"\x11" * 40)]))
    struct.pack_into("<I", broken, 16 + 4, 0)  # the entry's header size
    with pytest.raises(ValueError, match="does not fit its fatbin"):
        bundle.zero_other_archs(broken, 0, len(broken), {90})
    with pytest.raises(ValueError, match="runs past its section"):
        bundle.zero_other_archs(bytearray(first), 0, len(first) - 8, {90})


def test_section_finds_a_named_section_of_a_real_library() -> None:
    import onnxruntime

    bundle = _bundle()
    [library] = (Path(onnxruntime.__file__).parent / "capi").glob("onnxruntime_pybind11_state*.so")
    data = library.read_bytes()
    offset, size = bundle.section(data, ".dynsym")
    listed = subprocess.run(["readelf", "-S", "-W", str(library)], capture_output=True, text=True)
    if listed.returncode == 0:  # binutils is here: the same numbers as readelf's
        line = next(line for line in listed.stdout.splitlines() if " .dynsym " in line)
        fields = line.split("]", 1)[1].split()
        assert (int(fields[3], 16), int(fields[4], 16)) == (offset, size)
    assert 0 < offset < offset + size <= len(data)
    with pytest.raises(ValueError, match=r"no \.nv_fatbin section"):
        bundle.section(data, ".nv_fatbin")
    with pytest.raises(ValueError, match="not a 64-bit"):
        bundle.section(b"MZ" + data[2:], ".dynsym")
