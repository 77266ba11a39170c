"""Build int8q's op library: CUDA kernels when torch is a CUDA build and nvcc is present.

Environment:
  INT8Q_FORCE_CPU=1      build the CPU kernels only, even where nvcc exists
  TORCH_CUDA_ARCH_LIST   GPU targets; default "8.0;8.9;9.0a" (A100, L4/L40/4090, H100/H200)
  MAX_JOBS               parallel compile jobs (ninja)
"""

import glob
import os
import shutil

from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

import torch

ROOT = os.path.dirname(os.path.abspath(__file__))
DEFAULT_ARCH_LIST = "8.0;8.9;9.0a"


def want_cuda() -> bool:
    if os.environ.get("INT8Q_FORCE_CPU", "0") == "1":
        return False
    # A build machine needs no GPU: a CUDA build of torch plus nvcc is enough.
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc") if CUDA_HOME else shutil.which("nvcc")
    return torch.version.cuda is not None and nvcc is not None and os.path.exists(nvcc)


def sources(pattern: str) -> list:
    return sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern), recursive=True))


def extension():
    cxx_flags = ["-O3", "-std=c++17", "-ffp-contract=off", "-DPy_LIMITED_API=0x03090000"]
    src = sources("csrc/*.cpp") + sources("csrc/cpu/*.cpp")
    if not want_cuda():
        print("int8q: building the CPU kernels only")
        return CppExtension("int8q._C", src, extra_compile_args={"cxx": cxx_flags}, py_limited_api=True)
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_ARCH_LIST)
    print(f"int8q: building CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    nvcc_flags = ["-O3", "-std=c++17", "-lineinfo", "--expt-relaxed-constexpr", "-DNDEBUG"]
    if "9.0a" in os.environ["TORCH_CUDA_ARCH_LIST"]:
        nvcc_flags.append("-DINT8Q_HAVE_SM90A")  # the wgmma path is compiled in
    if os.environ.get("INT8Q_PTXAS_VERBOSE") == "1":
        nvcc_flags.append("-Xptxas=-v")
    src += sources("csrc/cuda/*.cu") + sources("csrc/cuda/*.cpp")
    return CUDAExtension(
        "int8q._C",
        src,
        extra_compile_args={"cxx": cxx_flags + ["-DINT8Q_WITH_CUDA"], "nvcc": nvcc_flags},
        py_limited_api=True,
    )


setup(
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension},
    options={"bdist_wheel": {"py_limited_api": "cp39"}},
)
