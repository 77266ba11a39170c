"""The machine code (SASS) of the compiled kernels, read back with cuobjdump.

- The Hopper GEMM (gemm_sm90a_kernel, sm_90a) issues wgmma s8 (IGMMA.64xBNx32.S8.S8, BN its
  tile width) in its main loop: the innermost loop around the instruction (from a backward
  branch's target to the branch) stores nothing, so it is the K loop, not the epilogue.
- The sm_80 / sm_89 GEMM (gemm_s8_kernel) issues mma.sync m16n8k32 s8 (IMMA.16832.S8.S8)
  in its main loop, by the same test.
- No int8q kernel touches local memory on any target (LDL / STL: register spills or arrays
  the compiler could not keep in registers).

No GPU is needed: these run wherever the extension was built with its CUDA kernels and
cuobjdump + nvdisasm can be found (PATH, $CUDA_HOME/bin, or the nvidia-cuda-cuobjdump and
nvidia-cuda-nvdisasm wheels of the test extras). Otherwise they skip and say why.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from typing import Dict, List, Optional, Tuple

import pytest

import int8q


def find_tool(name: str) -> Optional[str]:
    found = shutil.which(name)
    if found:
        return found
    dirs = [os.path.join(os.environ.get("CUDA_HOME", "/usr/local/cuda"), "bin")]
    dirs += [os.path.join(entry, "nvidia", "cu13", "bin") for entry in sys.path if entry]
    for d in dirs:
        path = os.path.join(d, name)
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    return None


def library_path() -> str:
    return int8q._C.__file__


@functools.lru_cache(maxsize=None)
def cuobjdump() -> List[str]:
    tool, disasm = find_tool("cuobjdump"), find_tool("nvdisasm")
    if tool is None or disasm is None:
        pytest.skip("cuobjdump and nvdisasm not found (CUDA toolkit, or pip install "
                    "nvidia-cuda-cuobjdump nvidia-cuda-nvdisasm)")
    return [tool]


def run_cuobjdump(*args: str) -> str:
    env = dict(os.environ, NVDISASM_PATH=os.path.dirname(find_tool("nvdisasm")))
    proc = subprocess.run(cuobjdump() + list(args) + [library_path()], env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"cuobjdump {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}"
    return proc.stdout


@functools.lru_cache(maxsize=None)
def targets() -> List[str]:
    """The SASS targets in the library (sm_80, sm_89, sm_90a, ...)."""
    if not int8q.has_cuda_kernels():
        pytest.skip("int8q was built without its CUDA kernels")
    return sorted(set(re.findall(r"\.(sm_\d+a?)\.cubin", run_cuobjdump("-lelf"))))


@functools.lru_cache(maxsize=None)
def functions(arch: str) -> Dict[str, List[str]]:
    """Mangled kernel name -> its SASS lines, for one target."""
    if arch not in targets():
        pytest.skip(f"int8q was built without {arch} code (targets: {', '.join(targets())})")
    out: Dict[str, List[str]] = {}
    name = None
    for line in run_cuobjdump("-sass", "-arch", arch).splitlines():
        header = re.match(r"\s*Function : (\S+)", line)
        if header:
            name = header.group(1)
            out[name] = []
        elif name is not None:
            out[name].append(line)
    assert out, f"no functions in the {arch} SASS"
    return out


def main_loop(lines: List[str], opcode: str) -> Optional[List[str]]:
    """The instructions of the innermost loop around an `opcode` instruction (between a
    backward branch's target and the branch), or None when no loop holds one. cuobjdump
    prints `/*addr*/` before each instruction and branch targets as absolute addresses."""
    code: List[Tuple[int, str]] = []
    back: List[Tuple[int, int]] = []
    for line in lines:
        m = re.search(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", line)
        if m is None:
            continue
        here, text = int(m.group(1), 16), m.group(2).strip()
        code.append((here, text))
        branch = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", text)
        if branch and int(branch.group(1), 16) <= here:
            back.append((int(branch.group(1), 16), here))
    loops = [(end - start, start, end) for start, end in back
             for at, text in code if opcode in text and start <= at < end]
    if not loops:
        return None
    _, start, end = min(loops)
    return [text for at, text in code if start <= at <= end]


def assert_main_loop(name: str, lines: List[str], opcode: str) -> None:
    assert any(opcode in line for line in lines), f"{name}: no {opcode}"
    loop = main_loop(lines, opcode)
    assert loop is not None, f"{name}: {opcode} is not inside a loop"
    # The main loop only loads and multiplies; the epilogue's stores come after it.
    stores = [text for text in loop if re.search(r"(^|\s)(STG|STS|ST|UTMASTG|UBLKCP)\b", text)]
    assert not stores, f"{name}: the loop around {opcode} also stores: {stores[:3]}"


def kernels(arch: str, pattern: str) -> Dict[str, List[str]]:
    found = {name: lines for name, lines in functions(arch).items() if re.search(pattern, name)}
    assert found, f"no {pattern} kernel in the {arch} SASS"
    return found


def test_hopper_gemm_issues_wgmma_in_its_main_loop():
    for name, lines in kernels("sm_90a", r"gemm_sm90a_kernel").items():
        block_n = int(re.search(r"gemm_sm90a_kernelILi(\d+)E", name).group(1))
        assert_main_loop(name, lines, f"IGMMA.64x{block_n}x32.S8.S8")


@pytest.mark.parametrize("arch", ["sm_80", "sm_89"])
def test_ampere_gemm_issues_mma_sync_in_its_main_loop(arch):
    for name, lines in kernels(arch, r"gemm_s8_kernel").items():
        assert_main_loop(f"{arch} {name}", lines, "IMMA.16832.S8.S8")


@pytest.mark.parametrize("arch", ["sm_80", "sm_89", "sm_90a"])
def test_no_kernel_uses_local_memory(arch):
    spilled = [name for name, lines in functions(arch).items()
               if any(re.search(r"\b(LDL|STL)\b", line) for line in lines)]
    assert not spilled, f"{arch}: local memory (spills) in {spilled}"
