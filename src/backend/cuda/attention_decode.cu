// Decode attention on CUDA cores: one CTA per (query heads of one KV group, token, split): groups
// of 8-32 lanes each walk their own keys (one key per group at a time, its lanes sharing the head
// dimension, the group's next key already loading) keeping an online softmax per query head, so
// every K/V row is read once for all the query heads of its KV group (up to 4 in a CTA); the groups
// merge in shared memory and the splits through a workspace, merged by whichever split finishes
// last. Steps of many tokens (32+) take the tensor-core kernel instead (attention_decode_mma.cu):
// there this kernel is bound by its instructions, not by the KV bytes.
#include "backend/cuda/attention.cuh"

namespace baton::cuda {
namespace {

// One CTA per (kG-or-fewer query heads of one KV group, token, split) with groups of kLanes
// lanes; each group walks its own keys (one key per group at a time, its lanes sharing the head
// dimension, the group's next key already loading) keeping an online softmax per query head: a
// key and value are loaded once for every query head that reads them (GQA), not once per head.
// At least 4 resident CTAs per SM (64 registers) for a head of up to 64 per CTA, 2 up to 128.
template <int D, class Kv, bool kFused, int kG>
__global__ void __launch_bounds__(kDecodeThreads, kG == 1 && D <= 64 ? 4 : (D <= 128 ? 2 : 1))
    decode_kernel(AttnArgs a, QkvArgs p, int n_splits, float* ws, int* arrivals) {
  pdl_trigger();
  // The fused kernel reads nothing an earlier kernel of the step writes until prepare_qkv (the
  // QKV GEMM's rows): the step's positions and block tables were copied before its first kernel,
  // and the cached keys before the new token were written by earlier steps (the new token's, which
  // this kernel writes, is read from shared memory instead). So its first keys' loads go out
  // before the wait, while the QKV GEMM is still running.
  if (!kFused) pdl_wait();
  constexpr int kLanes = decode_lanes(kG, D), kE = D / kLanes, kGroups = kDecodeThreads / kLanes;
  const int per_kv = a.H / a.KVH, hp = a.heads_per_cta, ctas_per_kv = (per_kv + hp - 1) / hp;
  const int g = blockIdx.x / ctas_per_kv, h0 = g * per_kv + blockIdx.x % ctas_per_kv * hp;
  const int nh = min(hp, g * per_kv + per_kv - h0);  // this CTA's query heads: h0 .. h0 + nh - 1
  const int t = blockIdx.y, split = blockIdx.z;
  const int gid = threadIdx.x / kLanes, sub = threadIdx.x % kLanes;
  const KeyRange r = keys_of(a.positions[t], a.window);
  const int n_keys = r.last - r.first + 1;
  // A graph fixes n_splits for every context length; a short context uses fewer of them (at
  // least a key per group each), and the CTAs beyond leave at once.
  const int splits = max(1, min(n_splits, (n_keys + kGroups - 1) / kGroups));
  if (split >= splits) {
    return;
  }
  const int chunk = n_keys > 0 ? (n_keys + splits - 1) / splits : 0;
  const int begin = r.first + split * chunk, end = min(begin + chunk, r.last + 1);
  const int32_t* table = a.tables + static_cast<int64_t>(a.seq_of[t]) * *a.table_stride;

  const float qs = a.scale * a.k_scale * kLog2e;
  __shared__ float qv[kFused ? kG * D : 1], kn[kFused ? D : 1], vn[kFused ? D : 1];
  const bool has_new =
      kFused && r.last >= 0 && begin <= r.last && r.last < end;  // this CTA's keys end at the new token

  float k[kE], v[kE];  // the key being scored
  // The next key of this group, in flight while the current one is scored (one round trip per key
  // otherwise: a long range was a chain of them). A key past the range re-reads the last one (its
  // score is not used); the new token's key comes from shared memory (after prepare_qkv).
  RawRow<Kv, kE> next_k, next_v;
  auto fetch = [&](int j) {
    const int jj = min(j, end - 1);
    next_k.load(kv_row<Kv>(a, table, jj, 0, g) + sub * kE);
    next_v.load(kv_row<Kv>(a, table, jj, 1, g) + sub * kE);
  };
  auto take = [&](int j) {
    next_k.to_f32(k);
    next_v.to_f32(v);
    if (kFused && has_new && j == r.last)
#pragma unroll
      for (int i = 0; i < kE; ++i) k[i] = kn[sub * kE + i], v[i] = vn[sub * kE + i];
  };
  // The first keys' loads go out before the queries are prepared: independent round trips.
  if (begin < end) fetch(begin + gid);
  if (kFused) pdl_wait();
  if constexpr (kFused) {
    if (r.last >= 0)
      prepare_qkv<D, Kv>(p, t, h0, nh, g, has_new, has_new && h0 % per_kv == 0, qv, kn, vn);
  }
  float q[kG][kE], acc[kG][kE], m[kG], l[kG];
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
    const float* qrow =
        kFused ? qv + hd * D + sub * kE : a.q + static_cast<int64_t>(t) * a.q_row_stride + (h0 + hd) * D + sub * kE;
#pragma unroll
    for (int i = 0; i < kE; ++i) q[hd][i] = hd < nh ? qrow[i] * qs : 0.f, acc[hd][i] = 0.f;
    m[hd] = -INFINITY, l[hd] = 0.f;
  }
  // The trip count is the same for every group, so the shuffles see full warps.
  for (int j0 = begin; j0 < end; j0 += kGroups) {
    const int j = j0 + gid;
    const bool ok = j < end;
    take(j);
    if (j0 + kGroups < end) fetch(j + kGroups);  // the same for every group: the loop bound's test
    attend_key<kG, kE, kLanes>(q, k, v, ok, m, l, acc);
  }

  // The groups' partial softmaxes meet in shared memory, every head at once.
  __shared__ float sm_m[kG][kGroups], sm_l[kG][kGroups], sm_acc[kG][kGroups][D], sm_max[kG];
#pragma unroll
  for (int hd = 0; hd < kG; ++hd) {
    if (sub == 0) sm_m[hd][gid] = m[hd], sm_l[hd][gid] = l[hd];
#pragma unroll
    for (int i = 0; i < kE; ++i) sm_acc[hd][gid][sub * kE + i] = acc[hd][i];
  }
  __syncthreads();
  float weight = 0.f;  // thread hd * kGroups + i: group i's weight in head hd
  if (threadIdx.x < kG * kGroups) {
    const int hd = threadIdx.x / kGroups;
    float M = -INFINITY;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) M = fmaxf(M, sm_m[hd][i]);
    weight = M == -INFINITY ? 0.f : exp2f(sm_m[hd][threadIdx.x % kGroups] - M);
    if (threadIdx.x % kGroups == 0) sm_max[hd] = M;
  }
  __syncthreads();
  if (threadIdx.x < kG * kGroups) sm_m[threadIdx.x / kGroups][threadIdx.x % kGroups] = weight;
  __syncthreads();
  for (int e = threadIdx.x; e < nh * D; e += blockDim.x) {
    const int hd = e / D, d = e % D, h = h0 + hd;
    float L = 0.f, A = 0.f;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) L += sm_l[hd][i] * sm_m[hd][i];
#pragma unroll 8
    for (int i = 0; i < kGroups; ++i) A += sm_acc[hd][i][d] * sm_m[hd][i];
    if (splits == 1) {
      out_bf16(a)[static_cast<int64_t>(t) * a.H * D + h * D + d] = __float2bfloat16(L > 0.f ? A / L * a.v_scale : 0.f);
    } else {
      float* w = ws + ((static_cast<int64_t>(t) * a.H + h) * n_splits + split) * (D + 2);
      w[d] = A;
      if (d == 0) w[D] = sm_max[hd], w[D + 1] = L;
    }
  }
  if (splits == 1) {
    return;
  }
  // The last split of (token, heads) to finish merges them all (no merge kernel to launch).
  const bool last = last_split(arrivals, static_cast<int64_t>(t) * a.H + h0, splits);
  if (!last) {
    return;
  }
  merge_splits<(kG * D + kDecodeThreads - 1) / kDecodeThreads>(a, n_splits, splits, ws, t, h0, nh);
}

// The decode kernel for head size D and heads_per_cta query heads per CTA (grouped for the sizes
// decode_heads_per_cta groups, 64 and 128).
template <int D, class Kv, bool kFused>
DecodeKernel decode_kernel_d(int heads_per_cta) {
  if constexpr (D == 64 || D == 128) {
    if (heads_per_cta > 2) return decode_kernel<D, Kv, kFused, 4>;
    if (heads_per_cta > 1) return decode_kernel<D, Kv, kFused, 2>;
  }
  return decode_kernel<D, Kv, kFused, 1>;
}

// The same for a head size known at run time: null for sizes without a kernel (the backend
// refuses them at load).
template <class Kv, bool kFused>
DecodeKernel decode_kernel_for(int D, int heads_per_cta) {
  switch (D) {
    case 8:
      return decode_kernel_d<8, Kv, kFused>(heads_per_cta);
    case 16:
      return decode_kernel_d<16, Kv, kFused>(heads_per_cta);
    case 32:
      return decode_kernel_d<32, Kv, kFused>(heads_per_cta);
    case 64:
      return decode_kernel_d<64, Kv, kFused>(heads_per_cta);
    case 128:
      return decode_kernel_d<128, Kv, kFused>(heads_per_cta);
    case 256:
      return decode_kernel_d<256, Kv, kFused>(heads_per_cta);
    default:
      return nullptr;
  }
}

template <class Kv, bool kFused>
void launch_decode(const AttnArgs& a, const QkvArgs& p, int n_splits, float* ws, int* arrivals, cudaStream_t s) {
  if constexpr (kFused) {
    if (a.mma && launch_decode_mma(a, p, n_splits, ws, arrivals, s)) return;
  }
  const DecodeKernel kernel = decode_kernel_for<Kv, kFused>(a.D, a.heads_per_cta);
  if (!kernel) return;
  const dim3 grid(a.KVH * ((a.H / a.KVH + a.heads_per_cta - 1) / a.heads_per_cta), a.T, n_splits);
  launch(kernel, grid, kDecodeThreads, 0, s, a, p, n_splits, ws, arrivals);
}

}  // namespace

int decode_heads_per_cta(int H, int KVH, int D, int max_heads) {
  if (KVH <= 0 || H % KVH != 0 || (D != 64 && D != 128)) return 1;
  max_heads = std::clamp(max_heads, 1, kMaxCtaHeads);
  const int per_kv = H / KVH, ctas = (per_kv + max_heads - 1) / max_heads;
  return (per_kv + ctas - 1) / ctas;
}

int decode_ctas_per_sm(int D, bool fp8, int heads_per_cta) {
  const DecodeKernel kernel = fp8 ? decode_kernel_for<Fp8Kv, true>(D, heads_per_cta)
                                  : decode_kernel_for<Bf16Kv, true>(D, heads_per_cta);
  int per_sm = 0;
  if (kernel) cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kDecodeThreads, 0);
  return std::max(per_sm, 1);
}

void attention_decode(const AttnArgs& args, int n_splits, float* workspace, int* arrivals, const QkvArgs* fuse,
                      cudaStream_t s) {
  if (args.T == 0) return;
  AttnArgs a = args;
  a.heads_per_cta = std::clamp(a.heads_per_cta, 1, std::min(kMaxCtaHeads, a.H / a.KVH));
  const QkvArgs none{};
  if (fuse && a.fp8)
    launch_decode<Fp8Kv, true>(a, *fuse, n_splits, workspace, arrivals, s);
  else if (fuse)
    launch_decode<Bf16Kv, true>(a, *fuse, n_splits, workspace, arrivals, s);
  else if (a.fp8)
    launch_decode<Fp8Kv, false>(a, none, n_splits, workspace, arrivals, s);
  else
    launch_decode<Bf16Kv, false>(a, none, n_splits, workspace, arrivals, s);
}

}  // namespace baton::cuda
