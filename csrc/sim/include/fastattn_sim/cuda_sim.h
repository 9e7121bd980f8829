// Entry point of the host SIMT runtime: what a .cu file sees instead of the CUDA toolkit
// headers when it is compiled by the host C++ compiler with FASTATTN_SIM defined
// (csrc/cuda/common/platform.cuh includes this). See runtime.h for the execution model.
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>

#include "fastattn_sim/atomics.h"
#include "fastattn_sim/half.h"
#include "fastattn_sim/math.h"
#include "fastattn_sim/runtime.h"
#include "fastattn_sim/types.h"
#include "fastattn_sim/warp.h"

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline __attribute__((always_inline))
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#define __align__(n) alignas(n)
#define __constant__ static
// Static __shared__ declarations reach the compiler rewritten into per-block variables
// (static_shared(), see runtime.h): the sim build compiles every source through a copy made
// by csrc/sim/sim_sources.py. A declaration that was not rewritten would be one variable for
// all blocks, so it is an error.
#define __shared__ \
  static_assert(false, "a static __shared__ declaration must be compiled through csrc/sim/sim_sources.py");

#define threadIdx (::fastattn::sim::g_ctx.thread_idx)
#define blockIdx (::fastattn::sim::g_ctx.block_idx)
#define blockDim (::fastattn::sim::g_ctx.block_dim)
#define gridDim (::fastattn::sim::g_ctx.grid_dim)
constexpr int warpSize = 32;

inline void __syncthreads() { fastattn::sim::sync_block(); }
