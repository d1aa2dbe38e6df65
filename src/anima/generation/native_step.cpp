// The decode steps of anima's fast Llama backend, each one OpenMP region (see native_step.py for why), and the small
// jobs around them that torch ran as many ops: the sampling path's draws and the batch's slot swaps.
//
// The arithmetic is DecodeStep's (step_graphs.py), on the same folded weights: RMSNorm gains and sqrt(hidden) in
// each matmul's input columns, 1/sqrt(head_dim) in W_q, so a norm is a scale on a matmul's output. Plain C++ with
// no torch headers: it compiles in about a second with -O3 -march=native, and the loops vectorize on their own.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

namespace {

constexpr int64_t kMaxRows = 64;  // tokens anima_decode_rows takes at once (native_step.MAX_ROWS)

// The attention helpers and the matmul tiles are forced inline: called out of line from the OpenMP loops, the whole
// single-token step ran ~20% slower (EPYC Zen 2, g++ 12).
#define ANIMA_INLINE __attribute__((always_inline)) inline

struct Spec {
  int64_t n_layers, hidden, n_heads, n_kv, head_dim, inter, vocab, max_positions;
  int64_t k_layer, k_head, k_dim;    // strides of the K^T cache (layer, head, dim); positions are contiguous
  int64_t v_layer, v_head, v_pos;    // strides of the V cache (layer, head, position); dims are contiguous
  double eps;                        // eps * hidden: the folded RMSNorm's epsilon
  const float* embed;                // (vocab, hidden)
  const float* cos;                  // (max_positions, head_dim)
  const float* sin;
  const float* head;                 // (vocab, hidden), the final norm folded in
  const float* const* weights;       // per layer: W_qkv (q+2kv, hidden), W_o (hidden, q), W_gate|up (2*inter, hidden),
                                     // W_down (hidden, inter); row-major, contiguous
  const float* const* packed;        // the same four per layer packed for the rows kernel (see gemm), gate and up
                                     // blocks interleaved
  const float* packed_head;
};

// One weight row times x with 32 independent partial sums (4 AVX2 or 2 AVX-512 registers once vectorized): a
// single accumulator makes the loop wait on its add chain instead of on memory.
inline float dot_row(const float* __restrict w, const float* __restrict x, int64_t n) {
  float acc[32] = {0.f};
  int64_t j = 0;
  for (; j + 32 <= n; j += 32)
    for (int u = 0; u < 32; ++u) acc[u] += w[j + u] * x[j + u];
  float s = 0.f;
  for (; j < n; ++j) s += w[j] * x[j];
  for (int u = 0; u < 32; ++u) s += acc[u];
  return s;
}

// A vector of floats as one value (GCC/Clang vector extension): whole registers' worth of lanes without
// intrinsics, 16 with AVX-512 and 8 otherwise (AVX2, NEON pairs). The vectorizer turned the same loops written on
// arrays into shuffles, 4x slower.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
// The rows kernel's register tile (see gemm): kTileRows tokens x kTileBlocks blocks of accumulators, plus a
// register per block's weights and one for the token's broadcast. 8 x 3 (28 of AVX-512's 32 registers) over 8 x 4
// (37: spills): tiny on an EPYC Zen 4, 8 rows 1,740-1,855 -> 1,560-1,818 us, 16 rows 3,201-3,551 -> 3,029-3,309.
// SwiGLU tiles take gate/up pairs, so an even count: 8 x 4 measured faster there than 8 x 2.
constexpr int kTileRows = 8, kTileBlocks = 3, kGluTileBlocks = 4;
#else
constexpr int kLanes = 8;
constexpr int kTileRows = 4, kTileBlocks = 2, kGluTileBlocks = 2;  // 8 accumulators of 16 registers
#endif
typedef float vf __attribute__((vector_size(kLanes * sizeof(float))));

inline vf loadv(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

typedef float v8 __attribute__((vector_size(8 * sizeof(float))));
typedef float v4 __attribute__((vector_size(4 * sizeof(float))));

// The sum of v's lanes by halving: vector adds, then three scalar ones.
inline float hsum(vf v) {
  v8 a;
  if constexpr (kLanes == 16) {
    v8 hi;
    std::memcpy(&a, &v, sizeof a);
    std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof a, sizeof hi);
    a += hi;
  } else {
    std::memcpy(&a, &v, sizeof a);
  }
  v4 b, hi4;
  std::memcpy(&b, &a, sizeof b);
  std::memcpy(&hi4, reinterpret_cast<const char*>(&a) + sizeof b, sizeof hi4);
  b += hi4;
  return (b[0] + b[2]) + (b[1] + b[3]);
}

// e^x lane by lane (Cephes' expf: x = n ln2 + r with |r| <= ln2 / 2, a degree-5 polynomial in r, times 2^n; within
// 1 ulp over [-87, 88], clamped outside): std::exp is a scalar call per lane, and SiLU needs one per MLP unit and row.
typedef int32_t vi __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline vf splat(float c) { return vf{} + c; }

inline vf vexp(vf x) {
  x = x > splat(-87.f) ? x : splat(-87.f);
  x = x < splat(88.f) ? x : splat(88.f);
  const vf fx = x * 1.44269504088896341f + 0.5f;
  vi n = __builtin_convertvector(fx, vi);  // truncates toward zero: one too high where fx < 0 is not whole
  n += __builtin_convertvector(n, vf) > fx;  // true lanes are -1
  const vf nf = __builtin_convertvector(n, vf);
  const vf r = x - nf * 0.693359375f + nf * 2.12194440e-4f;
  vf p = splat(1.9875691500e-4f);
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const vi bits = (n + 127) << 23;
  vf scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

// The rows kernel's matmuls run on packed weights: a matrix (rows x n, row-major) as blocks of kLanes output rows,
// each block stored input by input (n x kLanes). One vector load then holds kLanes outputs' weights for one input,
// and a token's input is a broadcast: a tile of kTileRows tokens x kTileBlocks blocks accumulates in registers with
// no horizontal sums, and the matrix streams front to back. Against dot products of weight rows (one matrix of
// 6,912 x 288, 2 threads, Xeon with AVX-512): 8 tokens 325 -> 140 us, 16 tokens 621 -> 255 us.
// native_step.py packs the weights (``pack_blocks``) with kLanes (``anima_pack_lanes``).
enum class Out { kStore, kAdd, kSwiGLU };  // out = result * scale; out += result; out = SiLU(gate) * up

inline void put_lanes(float* o, int64_t at, vf v, int64_t rows, bool add) {
  if (at + kLanes <= rows) {
    if (add) v += loadv(o + at);
    std::memcpy(o + at, &v, sizeof v);
  } else {
    for (int64_t l = 0; at + l < rows; ++l) o[at + l] = add ? o[at + l] + v[l] : v[l];
  }
}

// Tokens X[0..R) times packed blocks b0..b0+NB into out (row stride ldo, `rows` outputs). For kSwiGLU the blocks
// alternate gate, up (native_step.py interleaves them), and output block k of the tile is SiLU(gate) * up.
template <int R, int NB, Out kOut>
ANIMA_INLINE void gemm_tile(const float* P, int64_t n, int64_t b0, const float* X, int64_t ldx, const float* scale,
                            float* out, int64_t ldo, int64_t rows) {
  vf acc[R][NB] = {};
  const float* p = P + b0 * n * kLanes;
  for (int64_t j = 0; j < n; ++j) {
    vf w[NB];
    for (int nb = 0; nb < NB; ++nb) w[nb] = loadv(p + (nb * n + j) * kLanes);
    for (int r = 0; r < R; ++r) {
      const vf x = splat(X[r * ldx + j]);
      for (int nb = 0; nb < NB; ++nb) acc[r][nb] += w[nb] * x;
    }
  }
  for (int r = 0; r < R; ++r) {
    if constexpr (kOut == Out::kSwiGLU) {
      for (int k = 0; k < NB / 2; ++k) {
        const vf g = acc[r][2 * k] * scale[r], u = acc[r][2 * k + 1] * scale[r];
        put_lanes(out + r * ldo, (b0 / 2 + k) * kLanes, g / (1.f + vexp(-g)) * u, rows, false);
      }
    } else {
      for (int nb = 0; nb < NB; ++nb)
        put_lanes(out + r * ldo, (b0 + nb) * kLanes, kOut == Out::kAdd ? acc[r][nb] : acc[r][nb] * scale[r], rows,
                  kOut == Out::kAdd);
    }
  }
}

// Every token row through blocks b0..b0+NB: tiles of kTileRows tokens, then 4, 2 and 1.
template <int NB, Out kOut>
ANIMA_INLINE void gemm_blocks(const float* P, int64_t n, int64_t b0, const float* X, int64_t ldx, int64_t R,
                              const float* scale, float* out, int64_t ldo, int64_t rows) {
  int64_t r = 0;
  for (; r + kTileRows <= R; r += kTileRows)
    gemm_tile<kTileRows, NB, kOut>(P, n, b0, X + r * ldx, ldx, scale + r, out + r * ldo, ldo, rows);
  if constexpr (kTileRows > 4) {
    if (r + 4 <= R) {
      gemm_tile<4, NB, kOut>(P, n, b0, X + r * ldx, ldx, scale + r, out + r * ldo, ldo, rows);
      r += 4;
    }
  }
  if (r + 2 <= R) {
    gemm_tile<2, NB, kOut>(P, n, b0, X + r * ldx, ldx, scale + r, out + r * ldo, ldo, rows);
    r += 2;
  }
  if (r < R) gemm_tile<1, NB, kOut>(P, n, b0, X + r * ldx, ldx, scale + r, out + r * ldo, ldo, rows);
}

// out (R rows, stride ldo; `rows` outputs, for kSwiGLU the MLP's width) from packed P and the R rows of X (stride
// ldx, n inputs): an orphaned worksharing loop over tiles of blocks, called from inside a parallel region.
template <Out kOut>
inline void gemm(const float* P, int64_t n, int64_t rows, const float* X, int64_t ldx, int64_t R,
                 const float* scale, float* out, int64_t ldo) {
  constexpr int64_t kStep = kOut == Out::kSwiGLU ? 2 : 1;  // a gate block goes with its up block
  constexpr int kNB = kOut == Out::kSwiGLU ? kGluTileBlocks : kTileBlocks;
  const int64_t blocks = kStep * ((rows + kLanes - 1) / kLanes);
#pragma omp for schedule(static)
  for (int64_t g = 0; g < (blocks + kNB - 1) / kNB; ++g) {
    const int64_t b0 = g * kNB;
    if (b0 + kNB <= blocks)
      gemm_blocks<kNB, kOut>(P, n, b0, X, ldx, R, scale, out, ldo, rows);
    else
      for (int64_t b = b0; b < blocks; b += kStep)
        gemm_blocks<kStep, kOut>(P, n, b, X, ldx, R, scale, out, ldo, rows);
  }
}

inline float inv_rms(const float* x, int64_t n, double eps) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return 1.f / std::sqrt(s + static_cast<float>(eps));
}


// NV vectors of scores (positions t..) kept in registers over every dim of q: no load and store of the scores per dim.
template <int NV>
ANIMA_INLINE void q_dot_kt_block(const float* q, const float* kt, int64_t k_dim, int64_t hd, float* scores) {
  vf acc[NV] = {};
  for (int64_t d = 0; d < hd; ++d) {
    const vf qd = splat(q[d]);
    const float* row = kt + d * k_dim;
    for (int i = 0; i < NV; ++i) acc[i] += qd * loadv(row + i * kLanes);
  }
  std::memcpy(scores, acc, sizeof acc);
}

// scores[t] = q . K^T[:, t] for t < n (K^T rows contiguous over positions), four vectors of positions at a time.
ANIMA_INLINE void q_dot_kt(const float* q, const float* kt, int64_t k_dim, int64_t hd, int64_t n, float* scores) {
  int64_t t = 0;
  for (; t + 4 * kLanes <= n; t += 4 * kLanes) q_dot_kt_block<4>(q, kt + t, k_dim, hd, scores + t);
  for (; t + kLanes <= n; t += kLanes) q_dot_kt_block<1>(q, kt + t, k_dim, hd, scores + t);
  for (; t < n; ++t) {
    float s = 0.f;
    for (int64_t d = 0; d < hd; ++d) s += q[d] * kt[d * k_dim + t];
    scores[t] = s;
  }
}

// scores[t] = exp(scores[t] - max) for t < n; returns 1 / their sum (the caller scales its weighted sum by it).
ANIMA_INLINE float exp_scores(float* scores, int64_t n) {
  float top = scores[0];
  for (int64_t t = 1; t < n; ++t) top = scores[t] > top ? scores[t] : top;
  float total = 0.f;
  for (int64_t t = 0; t < n; ++t) {
    scores[t] = std::exp(scores[t] - top);
    total += scores[t];
  }
  return 1.f / total;
}

// NV vectors of out (dims d..) kept in registers over every position.
template <int NV>
ANIMA_INLINE void p_dot_v_block(const float* p, const float* v, int64_t v_pos, int64_t n, float* out) {
  vf acc[NV];
  std::memcpy(acc, out, sizeof acc);
  for (int64_t t = 0; t < n; ++t) {
    const vf pt = splat(p[t]);
    const float* row = v + t * v_pos;
    for (int i = 0; i < NV; ++i) acc[i] += pt * loadv(row + i * kLanes);
  }
  std::memcpy(out, acc, sizeof acc);
}

// out[d] += sum over t < n of p[t] * V[t, d], up to four vectors of dims at a time.
ANIMA_INLINE void p_dot_v(const float* p, const float* v, int64_t v_pos, int64_t n, int64_t hd, float* out) {
  int64_t d = 0;
  for (; d + 4 * kLanes <= hd; d += 4 * kLanes) p_dot_v_block<4>(p, v + d, v_pos, n, out + d);
  switch ((hd - d) / kLanes) {
    case 3: p_dot_v_block<3>(p, v + d, v_pos, n, out + d); d += 3 * kLanes; break;
    case 2: p_dot_v_block<2>(p, v + d, v_pos, n, out + d); d += 2 * kLanes; break;
    case 1: p_dot_v_block<1>(p, v + d, v_pos, n, out + d); d += kLanes; break;
    default: break;
  }
  for (; d < hd; ++d) {
    float s = out[d];
    for (int64_t t = 0; t < n; ++t) s += p[t] * v[t * v_pos + d];
    out[d] = s;
  }
}

// RoPE of one head (rotate-half convention): out = x * cos + rotate_half(x) * sin.
inline void rope(const float* x, const float* cos, const float* sin, int64_t hd, float* out) {
  const int64_t half = hd / 2;
  for (int64_t d = 0; d < half; ++d) out[d] = x[d] * cos[d] - x[d + half] * sin[d];
  for (int64_t d = half; d < hd; ++d) out[d] = x[d] * cos[d] + x[d - half] * sin[d];
}

// Query head hq attends to its K/V head's cache (positions < pos) and to the new token; writes its output to
// `out` and, for the first query head of a group, the new K/V into the cache at `pos`.
ANIMA_INLINE void attend(const Spec& s, int64_t li, int64_t hq, int64_t pos, const float* qkv, float* kc, float* vc,
            const float* cos, const float* sin, float* q, float* k, float* scores, float* out) {
  const int64_t hd = s.head_dim, group = s.n_heads / s.n_kv, h = hq / group;
  const float* v_new = qkv + (s.n_heads + s.n_kv) * hd + h * hd;
  rope(qkv + hq * hd, cos, sin, hd, q);
  rope(qkv + (s.n_heads + h) * hd, cos, sin, hd, k);
  float* kh = kc + li * s.k_layer + h * s.k_head;
  float* vh = vc + li * s.v_layer + h * s.v_head;
  q_dot_kt(q, kh, s.k_dim, hd, pos, scores);
  float self = 0.f;
  for (int64_t d = 0; d < hd; ++d) self += q[d] * k[d];
  scores[pos] = self;
  const float inv = exp_scores(scores, pos + 1);
  for (int64_t d = 0; d < hd; ++d) out[d] = scores[pos] * v_new[d];
  p_dot_v(scores, vh, s.v_pos, pos, hd, out);
  for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
  if (hq % group == 0) {  // the other query heads of this group read positions < pos only
    for (int64_t d = 0; d < hd; ++d) kh[d * s.k_dim + pos] = k[d];
    std::memcpy(vh + pos * s.v_pos, v_new, hd * sizeof(float));
  }
}

}  // namespace

// One token at position `pos`: the logits into `logits` (vocab floats), its K/V into the caches at `pos`.
// `scratch` holds scratch_floats(spec) floats. Returns 0, or -1 for a token or position out of range.
extern "C" int anima_decode_step(const Spec* sp, int64_t tok, int64_t pos, float* kc, float* vc, float* logits,
                                 float* scratch, int threads) {
  const Spec& s = *sp;
  if (tok < 0 || tok >= s.vocab || pos < 0 || pos >= s.max_positions) return -1;
  const int64_t H = s.hidden, hd = s.head_dim, inter = s.inter, q_dim = s.n_heads * hd;
  const int64_t qkv_rows = (s.n_heads + 2 * s.n_kv) * hd;
  float* x = scratch;
  float* qkv = x + H;
  float* attn = qkv + qkv_rows;
  float* act = attn + q_dim;
  float* per_head = act + inter;  // per query head: q, k, scores (max_positions + 1)
  const int64_t head_floats = 2 * hd + s.max_positions + 1;
  const float* cos = s.cos + pos * hd;
  const float* sin = s.sin + pos * hd;
  std::memcpy(x, s.embed + tok * H, H * sizeof(float));

#pragma omp parallel num_threads(threads)
  {
    for (int64_t li = 0; li < s.n_layers; ++li) {
      const float* const* w = s.weights + 4 * li;
      float r = inv_rms(x, H, s.eps);  // every thread: cheaper than a barrier
#pragma omp for schedule(static)
      for (int64_t i = 0; i < qkv_rows; ++i) qkv[i] = dot_row(w[0] + i * H, x, H) * r;
#pragma omp for schedule(static)
      for (int64_t hq = 0; hq < s.n_heads; ++hq) {
        float* mine = per_head + hq * head_floats;
        attend(s, li, hq, pos, qkv, kc, vc, cos, sin, mine, mine + hd, mine + 2 * hd, attn + hq * hd);
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < H; ++i) x[i] += dot_row(w[1] + i * q_dim, attn, q_dim);
      r = inv_rms(x, H, s.eps);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < inter; ++i) {  // gate and up rows together: SiLU(g) * u with no second pass
        const float g = dot_row(w[2] + i * H, x, H) * r, u = dot_row(w[2] + (inter + i) * H, x, H) * r;
        act[i] = g / (1.f + std::exp(-g)) * u;
      }
#pragma omp for schedule(static)
      for (int64_t i = 0; i < H; ++i) x[i] += dot_row(w[3] + i * inter, act, inter);
    }
    const float r = inv_rms(x, H, s.eps);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < s.vocab; ++i) logits[i] = dot_row(s.head + i * H, x, H) * r;
  }
  return 0;
}

// The lanes of a packed block (native_step.py packs the rows kernel's weights with it).
extern "C" int anima_pack_lanes() { return kLanes; }

// Rows of tokens through every layer at once, each at its own slot and position: one decode step for several
// sequences (continuous batching: one row per slot) or a prompt (one slot, consecutive positions), or both.
// Every row's K/V goes into its slot first, then each row attends to its slot's positions <= its own. Logits
// (row-major, vocab floats each) for rows logits_from..n_rows-1 only. `scratch` holds
// batch_scratch_floats(spec, n_rows) floats. Returns 0, or -1 for a token, position, slot or row count out of range.
extern "C" int anima_decode_rows(const Spec* sp, int64_t n_rows, const int64_t* toks, const int64_t* positions,
                                 const int64_t* slots, int64_t k_slot, int64_t v_slot, float* kc, float* vc,
                                 int64_t logits_from, float* logits, float* scratch, int threads) {
  const Spec& s = *sp;
  const int64_t R = n_rows;
  if (R < 1 || R > kMaxRows || logits_from < 0 || logits_from >= R) return -1;
  for (int64_t r = 0; r < R; ++r)
    if (toks[r] < 0 || toks[r] >= s.vocab || positions[r] < 0 || positions[r] >= s.max_positions || slots[r] < 0)
      return -1;
  const int64_t H = s.hidden, hd = s.head_dim, inter = s.inter, q_dim = s.n_heads * hd, group = s.n_heads / s.n_kv;
  const int64_t qkv_rows = (s.n_heads + 2 * s.n_kv) * hd, qk_rows = (s.n_heads + s.n_kv) * hd;
  float* X = scratch;                 // (R, H)
  float* QKV = X + R * H;             // (R, qkv_rows)
  float* ATT = QKV + R * qkv_rows;    // (R, q_dim)
  float* ACT = ATT + R * q_dim;       // (R, inter)
  float* per_head = ACT + R * inter;  // per (row, query head): q, k, scores (max_positions + 1)
  const int64_t head_floats = 2 * hd + s.max_positions + 1;
  for (int64_t r = 0; r < R; ++r) std::memcpy(X + r * H, s.embed + toks[r] * H, H * sizeof(float));

#pragma omp parallel num_threads(threads)
  {
    float scale[kMaxRows];
    for (int64_t li = 0; li < s.n_layers; ++li) {
      const float* const* pw = s.packed + 4 * li;
      float* k_layer = kc + li * s.k_layer;
      float* v_layer = vc + li * s.v_layer;
      for (int64_t r = 0; r < R; ++r) scale[r] = inv_rms(X + r * H, H, s.eps);
      gemm<Out::kStore>(pw[0], H, qkv_rows, X, H, R, scale, QKV, qkv_rows);
#pragma omp for schedule(static)
      for (int64_t rh = 0; rh < R * s.n_kv; ++rh) {  // every row's new K (RoPE'd) and V into its slot
        const int64_t r = rh / s.n_kv, h = rh % s.n_kv, pos = positions[r];
        const float* row = QKV + r * qkv_rows;
        float* kh = k_layer + slots[r] * k_slot + h * s.k_head;
        float* vh = v_layer + slots[r] * v_slot + h * s.v_head;
        float k[512];
        rope(row + (s.n_heads + h) * hd, s.cos + pos * hd, s.sin + pos * hd, hd, k);
        for (int64_t d = 0; d < hd; ++d) kh[d * s.k_dim + pos] = k[d];
        std::memcpy(vh + pos * s.v_pos, row + qk_rows + h * hd, hd * sizeof(float));
      }
#pragma omp for schedule(static)
      for (int64_t rq = 0; rq < R * s.n_heads; ++rq) {
        const int64_t r = rq / s.n_heads, hq = rq % s.n_heads, h = hq / group, pos = positions[r];
        float* q = per_head + rq * head_floats;
        float* scores = q + 2 * hd;
        rope(QKV + r * qkv_rows + hq * hd, s.cos + pos * hd, s.sin + pos * hd, hd, q);
        const float* kh = k_layer + slots[r] * k_slot + h * s.k_head;
        const float* vh = v_layer + slots[r] * v_slot + h * s.v_head;
        q_dot_kt(q, kh, s.k_dim, hd, pos + 1, scores);
        const float inv = exp_scores(scores, pos + 1);
        float* out = ATT + r * q_dim + hq * hd;
        for (int64_t d = 0; d < hd; ++d) out[d] = 0.f;
        p_dot_v(scores, vh, s.v_pos, pos + 1, hd, out);
        for (int64_t d = 0; d < hd; ++d) out[d] *= inv;
      }
      gemm<Out::kAdd>(pw[1], q_dim, H, ATT, q_dim, R, scale, X, H);
      for (int64_t r = 0; r < R; ++r) scale[r] = inv_rms(X + r * H, H, s.eps);
      gemm<Out::kSwiGLU>(pw[2], H, inter, X, H, R, scale, ACT, inter);
      gemm<Out::kAdd>(pw[3], inter, H, ACT, inter, R, scale, X, H);
    }
    const int64_t L = R - logits_from;
    for (int64_t r = 0; r < L; ++r) scale[r] = inv_rms(X + (logits_from + r) * H, H, s.eps);
    gemm<Out::kStore>(s.packed_head, H, s.vocab, X + logits_from * H, H, L, scale, logits, s.vocab);
  }
  return 0;
}

// One inverse-CDF draw from unnormalized weights p (vocab of them, summing to `total`) at uniform u: the first token
// whose running weight exceeds u * total (the last token with nonzero weight when rounding leaves none), kept when
// the tokens with logits xr strictly above its own hold less than top_p of the mass (the nucleus, by rejection),
// else -1 (the caller draws again).
static int64_t draw_row(const float* p, const float* xr, int64_t vocab, float total, float u, float top_p) {
  constexpr int64_t kChunk = 4 * kLanes;
  const float target = u * total;
  float run = 0.f;
  int64_t tok = -1;
  for (int64_t j = 0; tok < 0 && j < vocab; j += kChunk) {  // skip whole chunks, then scan the one that crosses
    const int64_t end = j + kChunk < vocab ? j + kChunk : vocab;
    float chunk = 0.f;
    if (end - j == kChunk) {
      vf c = loadv(p + j) + loadv(p + j + kLanes) + loadv(p + j + 2 * kLanes) + loadv(p + j + 3 * kLanes);
      chunk = hsum(c);
    } else {
      for (int64_t t = j; t < end; ++t) chunk += p[t];
    }
    if (run + chunk <= target) {
      run += chunk;
      continue;
    }
    for (int64_t t = j; t < end; ++t) {
      run += p[t];
      if (run > target) {
        tok = t;
        break;
      }
    }
  }
  if (tok < 0)
    for (int64_t t = vocab - 1; t >= 0 && tok < 0; --t)
      if (p[t] > 0.f) tok = t;
  if (tok >= 0 && top_p < 1.f) {
    const float xt = xr[tok];
    const vf zero = {};
    vf above_v = {};
    int64_t j = 0;
    for (; j + kLanes <= vocab; j += kLanes) {
      const vf xv = loadv(xr + j), pv = loadv(p + j);
      above_v += xv > xt ? pv : zero;
    }
    float above = hsum(above_v);
    for (; j < vocab; ++j) above += xr[j] > xt ? p[j] : 0.f;
    if (!(above < top_p * total)) tok = -1;
  }
  return tok;
}

// The full-vocabulary sampling path (sampling._sample_full), one try per listed row: row rows[i] of logits `x`
// (n x vocab, row-major, penalties applied, not yet divided by the temperature) gives softmax(x * inv_temp[i]) and
// the token drawn from it at uniform u[i] within nucleus top_p[i] (draw_row), or -1 when rejected. -inf logits
// (top-k's cut) weigh exactly 0. In torch this was a division, a softmax, a cumsum, a masked sum and ~15 more ops:
// 200-300 us for 8 rows of 4,096 and ~100 us for one; then with torch's softmax and division, ~30 us for one row.
extern "C" void anima_sample_rows(int64_t n, int64_t vocab, const float* x, const int64_t* rows, const float* inv_temp,
                                  const float* u, const float* top_p, int64_t* out) {
  static thread_local std::vector<float> weights;
  weights.resize(vocab);
  float* p = weights.data();
  const vf neg_inf = splat(-std::numeric_limits<float>::infinity()), zero = {};
  for (int64_t i = 0; i < n; ++i) {
    const float* xr = x + rows[i] * vocab;
    const float t = inv_temp[i];
    vf mv = neg_inf;
    int64_t k = 0;
    for (; k + kLanes <= vocab; k += kLanes) {
      const vf xv = loadv(xr + k);
      mv = xv > mv ? xv : mv;
    }
    float m = -std::numeric_limits<float>::infinity();
    for (int l = 0; l < kLanes; ++l) m = mv[l] > m ? mv[l] : m;
    for (; k < vocab; ++k) m = xr[k] > m ? xr[k] : m;
    const float shift = m * t;
    vf acc = {};
    int64_t j = 0;
    for (; j + kLanes <= vocab; j += kLanes) {
      const vf xv = loadv(xr + j);
      const vf w = xv > neg_inf ? vexp(xv * t - shift) : zero;
      std::memcpy(p + j, &w, sizeof w);
      acc += w;
    }
    float total = hsum(acc);
    for (; j < vocab; ++j) {
      p[j] = xr[j] > -std::numeric_limits<float>::infinity() ? std::exp(xr[j] * t - shift) : 0.f;
      total += p[j];
    }
    out[i] = draw_row(p, xr, vocab, total, u[i], top_p[i]);
  }
}

// Exchange the first n positions of slots a and b in the K^T and V caches (slot strides k_slot, v_slot), in place:
// the batch keeps its active sequences in slots 0..B-1, so a sequence that ends trades places with the last one.
// torch did it with a temporary per cache and strided copies: tiny, 60 positions, 2 threads, 155 us; this 44 us.
extern "C" void anima_swap_slots(const Spec* sp, float* kc, float* vc, int64_t k_slot, int64_t v_slot, int64_t a,
                                 int64_t b, int64_t n, int threads) {
  const Spec& s = *sp;
#pragma omp parallel for collapse(2) num_threads(threads) schedule(static)
  for (int64_t li = 0; li < s.n_layers; ++li)
    for (int64_t h = 0; h < s.n_kv; ++h) {
      float* ka = kc + a * k_slot + li * s.k_layer + h * s.k_head;
      float* kb = kc + b * k_slot + li * s.k_layer + h * s.k_head;
      for (int64_t d = 0; d < s.head_dim; ++d) std::swap_ranges(ka + d * s.k_dim, ka + d * s.k_dim + n, kb + d * s.k_dim);
      float* va = vc + a * v_slot + li * s.v_layer + h * s.v_head;
      float* vb = vc + b * v_slot + li * s.v_layer + h * s.v_head;
      for (int64_t t = 0; t < n; ++t) std::swap_ranges(va + t * s.v_pos, va + t * s.v_pos + s.head_dim, vb + t * s.v_pos);
    }
}
