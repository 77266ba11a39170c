// Kernel launches with programmatic dependent launch (PDL, sm_90+). A matmul call is a
// short chain of kernels (quantize -> GEMM, then a split-K reduce on the mma.sync path) and
// at small M each one runs for a few microseconds, so the gap between two of them (the first
// grid draining, the next one being launched and filling the SMs) is a large share of the
// call. With PDL the next kernel of the stream is launched while the previous one still
// runs; its CTAs start, then block in pdl_wait() until the previous grid has completed and
// its memory is visible.
//
// Rule for every kernel launched through launch_kernel(_pdl_if): call pdl_wait() before the
// first read or write of global memory (inputs may have been written, and outputs may still be
// read, by the kernel before it, whichever op that was), then pdl_launch_dependents(). Both
// are no-ops without PDL (before sm_90, or INT8Q_DISABLE_PDL=1), so the rule costs nothing
// there. The wait holds until the previous grid is complete, so waiting kernels never change
// results, only how early their launch overhead is paid.
#pragma once

#include <c10/cuda/CUDAException.h>
#include <cuda_runtime.h>

#include <cstdlib>
#include <utility>

namespace int8q {
namespace cuda {

__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

// Lets the next kernel of the stream launch once every CTA of this grid has called it (or
// exited). Called after pdl_wait(), so at most one kernel waits ahead of the running one.
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}

// Starts fetching `bytes` bytes at p (16-byte aligned, bytes a multiple of 16) from memory
// into L2 without reading them into the SM. Allowed before pdl_wait(): L2 is where every
// SM's writes land, so a line fetched early is updated by the previous kernel's writes and
// nothing stale can be read later. The GEMMs issue it for the first weights they will
// stream, meant to move those bytes while the quantizer before them still runs; on an H200
// it made no measurable difference at 4096x4096, M <= 256 (within +-0.3 us), so it is a hint
// kept for GPUs where the launch overlap is longer, not a measured gain. (In matmul the
// sm_90a GEMM goes further and loads its first weight tiles into shared memory before the
// wait, which the quantizer's contract allows: see gemm_sm90a.cu, w_ready.)
__device__ __forceinline__ void prefetch_l2_bytes(const void* p, int bytes) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("cp.async.bulk.prefetch.L2.global [%0], %1;" ::"l"(p), "r"(bytes) : "memory");
#else
  for (int i = 0; i < bytes; i += 128) {
    asm volatile("prefetch.global.L2 [%0];" ::"l"(static_cast<const char*>(p) + i));
  }
#endif
}

// The most weight bytes one CTA prefetches into L2 ahead of pdl_wait(): enough to cover
// the few microseconds of a small quantize kernel at full memory bandwidth across the SMs
// (132 x 96 KB = 12 MB on an H100/H200), little enough to stay a fifth of the L2.
constexpr int kPrefetchBytesPerCta = 96 * 1024;

// PDL is used on sm_90+ unless INT8Q_DISABLE_PDL=1 (read per launch, so benchmarks and
// tests can compare both in one process).
bool pdl_enabled();

// kernel<<<grid, block, smem, stream>>>(args...) with PDL where enabled and allow_pdl, and an
// optional thread-block cluster shape (cluster_x CTAs along x; 1 for none). Without PDL the
// kernel starts after the one before it has finished, as a plain launch does.
template <typename... KernelArgs, typename... Args>
void launch_kernel_pdl_if(bool allow_pdl, void (*kernel)(KernelArgs...), dim3 grid, dim3 block,
                          size_t smem, cudaStream_t stream, unsigned cluster_x, Args&&... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[2];
  unsigned n = 0;
  if (cluster_x > 1) {
    attr[n].id = cudaLaunchAttributeClusterDimension;
    attr[n].val.clusterDim.x = cluster_x;
    attr[n].val.clusterDim.y = 1;
    attr[n].val.clusterDim.z = 1;
    ++n;
  }
  if (allow_pdl && pdl_enabled()) {
    attr[n].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[n].val.programmaticStreamSerializationAllowed = 1;
    ++n;
  }
  cfg.attrs = attr;
  cfg.numAttrs = n;
  C10_CUDA_CHECK(cudaLaunchKernelEx(&cfg, kernel, std::forward<Args>(args)...));
}

// launch_kernel_pdl_if with PDL allowed.
template <typename... KernelArgs, typename... Args>
void launch_kernel(void (*kernel)(KernelArgs...), dim3 grid, dim3 block, size_t smem,
                   cudaStream_t stream, unsigned cluster_x, Args&&... args) {
  launch_kernel_pdl_if(true, kernel, grid, block, smem, stream, cluster_x,
                       std::forward<Args>(args)...);
}

}  // namespace cuda
}  // namespace int8q
