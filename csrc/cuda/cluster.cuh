// Thread-block cluster helpers (sm_90): the CTA's rank and the cluster's size, cluster-wide
// barriers, and the address of a variable in another CTA's shared memory (distributed
// shared memory). Shared by the fused decode kernel (gemv.cu) and the split-K Hopper GEMM
// (gemm_sm90a.cu). Built for an older target, a cluster is one CTA.
#pragma once

#include <cstdint>

namespace int8q {
namespace cuda {

__device__ __forceinline__ int cluster_size() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t v;
  asm("mov.u32 %0, %%cluster_nctarank;" : "=r"(v));
  return static_cast<int>(v);
#else
  return 1;
#endif
}

__device__ __forceinline__ int cluster_rank() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t v;
  asm("mov.u32 %0, %%cluster_ctarank;" : "=r"(v));
  return static_cast<int>(v);
#else
  return 0;
#endif
}

// Barrier over every thread of every CTA of a cluster (sm_90), with release / acquire
// ordering of shared memory; call from all threads, converged.
__device__ __forceinline__ void cluster_barrier() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release.aligned;\n\tbarrier.cluster.wait.acquire.aligned;" ::: "memory");
#endif
}

// The same for threads that may reach it from diverged paths (no .aligned).
__device__ __forceinline__ void cluster_barrier_diverged() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("barrier.cluster.arrive.release;\n\tbarrier.cluster.wait.acquire;" ::: "memory");
#endif
}

// cluster_barrier, or __syncthreads when the cluster is one CTA (csize = cluster_size()).
__device__ __forceinline__ void cluster_sync(int csize) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  if (csize > 1) {
    cluster_barrier();
    return;
  }
#endif
  __syncthreads();
}

// The shared-memory address `addr` of this CTA, as the same variable in CTA `rank` of the
// cluster (sm_90; the address itself without clusters).
__device__ __forceinline__ uint32_t map_to_rank(uint32_t addr, int rank) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  uint32_t r;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;" : "=r"(r) : "r"(addr), "r"(rank));
  return r;
#else
  (void)rank;
  return addr;
#endif
}

}  // namespace cuda
}  // namespace int8q
