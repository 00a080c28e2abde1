"""What ``benchmarks/gpu.sh`` needs on a GPU machine that can reach no package index, in ``.gpu/``.

    .venv/bin/python benchmarks/gpu_bundle.py [--folder .gpu] [--chunks]     # or: make gpu-bundle

A device call carries at most 64 MiB of files (docs/gpu.md). ONNX Runtime's CUDA build,
``onnxruntime-gpu`` from PyPI, is a 244 MiB wheel, 186 MiB even as the few files the CUDA
provider needs, compressed: most of it is GPU code for six architectures, already compressed.
So this:

1. downloads the pinned wheel (its sha256 checked) for the GPU machine's Python (3.12);
2. keeps only what Python needs to run the CUDA (and TensorRT) provider: the package's Python
   files, its extension module, the provider libraries and the fp16 converter (not the int8
   quantizer: it pulls in most of ``onnxruntime.transformers``, and the 64 MiB leave no room);
3. zeroes, in the CUDA provider library, the GPU code of every architecture but the H200's
   (sm_90): each fatbin entry's payload is overwritten in place, its header and every offset
   kept, so the library stays the same size and the driver still finds the sm_90 code. Zeroed
   code compresses to nothing; the archive comes to about 57 MiB. Whether the driver accepts
   such a library is what the first GPU run finds out; ``--chunks`` keeps every architecture
   and splits the archive into 60 MiB parts to carry over consecutive calls instead;
4. downloads the pure-Python packages ``gpu.py run`` needs that the machine lacks (pydantic and
   its kin, at this project's pinned versions) as wheels, and builds modelship's own wheel from
   the working tree (``src/`` alone is not the package: the policies are package data);
5. prepares the cases (``gpu.py prepare``) and prints the sizes against the limit.

Never run in CI: it downloads 244 MiB.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import shutil
import struct
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

WHEEL = "onnxruntime-gpu==1.31.1"
WHEEL_SHA256 = "05d548956197b9d01f59b625de740e0d6be3593f874e241a12dc0362650ecdf7"
#: the GPU machine's Python (docs/gpu.md)
PYTHON = "3.12"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64"]
#: what ``gpu.py run`` imports that the GPU machine's image does not have
EXTRA = ["pydantic==2.14.4", "pydantic_core==2.50.5", "annotated-types==0.8.0",
         "typing-inspection==0.4.5"]  # fmt: skip
#: the H200's architecture (compute capability 9.0)
KEEP_ARCHS = {90}
CUDA_PROVIDER = "onnxruntime/capi/libonnxruntime_providers_cuda.so"
LIMIT = 64 * 2**20
CHUNK = 60 * 2**20

_FATBIN_MAGIC = 0xBA55ED50


def _wanted(name: str) -> bool:
    """The files of the wheel the CUDA and TensorRT providers need from Python."""
    if name.startswith("onnxruntime/capi/"):
        leaf = name.rsplit("/", 1)[1]
        # libonnxruntime.so is for C programs: the extension module does not link it
        return leaf.endswith(".py") or (leaf.endswith(".so") and leaf.startswith(
            ("onnxruntime_pybind11_state", "libonnxruntime_providers_")
        ))  # fmt: skip
    return name in (
        "onnxruntime/__init__.py",
        "onnxruntime/transformers/__init__.py",
        "onnxruntime/transformers/float16.py",
    )


def section(elf: bytes | bytearray, name: str) -> tuple[int, int]:
    """Offset and size of an ELF64 little-endian file's section ``name``."""
    if elf[:4] != b"\x7fELF" or elf[4] != 2 or elf[5] != 1:
        raise ValueError("not a 64-bit little-endian ELF file")
    (shoff,) = struct.unpack_from("<Q", elf, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", elf, 0x3A)

    def header(i: int) -> tuple[int, int, int]:
        base = shoff + i * shentsize
        (name_at,) = struct.unpack_from("<I", elf, base)
        offset, size = struct.unpack_from("<QQ", elf, base + 0x18)
        return name_at, offset, size

    _, names, _ = header(shstrndx)
    for i in range(shnum):
        name_at, offset, size = header(i)
        end = elf.index(b"\0", names + name_at)
        if elf[names + name_at : end].decode() == name:
            return offset, size
    raise ValueError(f"no {name} section")


def zero_other_archs(data: bytearray, start: int, end: int, keep: set[int]) -> tuple[int, int]:
    """In the fatbins between ``start`` and ``end``, overwrite with zeros the payload of every
    entry whose architecture is not in ``keep``; bytes zeroed and bytes kept.

    A fatbin is a header (magic, version, header size, size of its entries) and entries, each a
    header (kind, flags, header size, payload size, ..., architecture at byte 28) and a payload.
    """
    zeroed = kept = 0
    at = start
    while at + 16 <= end:
        magic, _, header_size, fat_size = struct.unpack_from("<IHHQ", data, at)
        if magic != _FATBIN_MAGIC:
            at += 8  # fatbins are 8-byte aligned in the section
            continue
        entry, stop = at + header_size, at + header_size + fat_size
        if stop > end:
            raise ValueError(f"a fatbin at {at:#x} runs past its section's end")
        while entry < stop:
            _, _, entry_header, payload = struct.unpack_from("<HHIQ", data, entry)
            (arch,) = struct.unpack_from("<I", data, entry + 28)
            body = entry + entry_header
            if entry_header < 32 or body + payload > stop:  # not the layout this knows: stop
                raise ValueError(f"an entry at {entry:#x} does not fit its fatbin")
            if arch in keep:
                kept += payload
            else:
                data[body : body + payload] = bytes(payload)
                zeroed += payload
            entry = body + payload
        at = stop
    return zeroed, kept


def _download(specs: list[str], into: Path) -> None:
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
         "--python-version", PYTHON, "--implementation", "cp", *platforms, "-d", str(into),
         *specs],
        check=True,
    )  # fmt: skip


def _archive(wheel: Path, out: Path, keep_all: bool) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(wheel) as zf, tarfile.open(fileobj=buffer, mode="w") as tar:
        for name in sorted(n for n in zf.namelist() if _wanted(n)):
            data = bytearray(zf.read(name))
            if name == CUDA_PROVIDER and not keep_all:
                start, size = section(data, ".nv_fatbin")
                zeroed, kept = zero_other_archs(data, start, start + size, KEEP_ARCHS)
                print(f"{name}: {zeroed:,} bytes of GPU code for other architectures zeroed, "
                      f"{kept:,} kept for sm_90")  # fmt: skip
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755 if name.endswith(".so") else 0o644
            tar.addfile(info, io.BytesIO(bytes(data)))
    print(f"compressing {buffer.tell():,} bytes with xz (about a minute) ...", flush=True)
    # one thread: xz's threads compress blocks apart, which costs about 0.2 MiB here
    xz = subprocess.run(
        ["xz", "-9e", "-T1", "-c"], input=buffer.getvalue(), capture_output=True, check=True
    )
    out.write_bytes(xz.stdout)


def _own_wheel(into: Path) -> None:
    """modelship's wheel, built from a copy of the files that travel (tracked, and untracked
    ones git does not ignore), so no stale ``build/`` output can slip in."""
    import tempfile

    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    names = subprocess.run(listed, capture_output=True, check=True).stdout.decode().split("\0")
    with tempfile.TemporaryDirectory() as tmp:
        for name in (n for n in names if n and Path(n).is_file()):
            (Path(tmp) / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(name, Path(tmp) / name)
        subprocess.run(
            [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
             "-w", str(into.resolve()), tmp],
            check=True,
        )  # fmt: skip


def build(folder: Path, chunks: bool) -> int:
    download = folder / "download"
    download.mkdir(parents=True, exist_ok=True)
    _download([WHEEL], download)
    [wheel] = download.glob("onnxruntime_gpu-*.whl")
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    if digest != WHEEL_SHA256:
        print(f"{wheel.name}: sha256 {digest}, expected {WHEEL_SHA256}", file=sys.stderr)
        return 2
    archive = folder / "onnxruntime-gpu.tar.xz"
    _archive(wheel, archive, keep_all=chunks)
    for old in folder.glob("onnxruntime-gpu.tar.xz.part*"):
        old.unlink()
    if chunks:
        data = archive.read_bytes()
        for i in range(0, len(data), CHUNK):
            (folder / f"onnxruntime-gpu.tar.xz.part{i // CHUNK}").write_bytes(data[i : i + CHUNK])
        archive.unlink()
    wheels = folder / "wheels"
    shutil.rmtree(wheels, ignore_errors=True)
    _download(EXTRA, wheels)
    _own_wheel(wheels)
    subprocess.run(
        [sys.executable, str(Path(__file__).with_name("gpu.py")), "prepare", str(folder / "cases")],
        check=True,
    )
    shutil.rmtree(download)
    carried = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    # what travels besides: tracked files and untracked ones git does not ignore
    listed = ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"]
    tree = subprocess.run(listed, capture_output=True, check=True).stdout
    tracked = sum(
        Path(n).stat().st_size for n in tree.decode().split("\0") if n and Path(n).is_file()
    )
    print(f"{folder}: {carried / 2**20:.1f} MiB; the working tree {tracked / 2**20:.1f} MiB; "
          f"limit {LIMIT / 2**20:.0f} MiB per call")  # fmt: skip
    if not chunks and carried + tracked > LIMIT:
        print("over the limit: carry fewer files", file=sys.stderr)
        return 1
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--folder", type=Path, default=Path(".gpu"))
    parser.add_argument(
        "--chunks", action="store_true",
        help="keep every architecture; split the archive into 60 MiB parts",
    )  # fmt: skip
    args = parser.parse_args()
    return build(args.folder, args.chunks)


if __name__ == "__main__":
    sys.exit(main())
