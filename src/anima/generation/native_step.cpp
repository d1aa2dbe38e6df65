// The single-token decode step of anima's fast Llama backend, as one OpenMP region (see native_step.py for why).
//
// The arithmetic is DecodeStep's (step_graphs.py), on the same folded weights: RMSNorm gains and sqrt(hidden) in
// each matmul's input columns, 1/sqrt(head_dim) in W_q, so a norm is a scale on a matmul's output. Plain C++ with
// no torch headers: it compiles in about a second with -O3 -march=native, and the loops vectorize on their own.
#include <cmath>
#include <cstdint>
#include <cstring>

namespace {

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

inline float inv_rms(const float* x, int64_t n, double eps) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += x[i] * x[i];
  return 1.f / std::sqrt(s + static_cast<float>(eps));
}

// RoPE of one head (rotate-half convention): out = x * cos + rotate_half(x) * sin.
inline void rope(const float* x, const float* cos, const float* sin, int64_t hd, float* out) {
  const int64_t half = hd / 2;
  for (int64_t d = 0; d < half; ++d) out[d] = x[d] * cos[d] - x[d + half] * sin[d];
  for (int64_t d = half; d < hd; ++d) out[d] = x[d] * cos[d] + x[d - half] * sin[d];
}

// Query head hq attends to its K/V head's cache (positions < pos) and to the new token; writes its output to
// `out` and, for the first query head of a group, the new K/V into the cache at `pos`. Inlined on purpose: called
// out of line from the OpenMP loop, the whole step ran ~20% slower (EPYC Zen 2, g++ 12).
__attribute__((always_inline)) inline void attend(const Spec& s, int64_t li, int64_t hq, int64_t pos, const float* qkv, float* kc, float* vc,
            const float* cos, const float* sin, float* q, float* k, float* scores, float* out) {
  const int64_t hd = s.head_dim, group = s.n_heads / s.n_kv, h = hq / group;
  const float* v_new = qkv + (s.n_heads + s.n_kv) * hd + h * hd;
  rope(qkv + hq * hd, cos, sin, hd, q);
  rope(qkv + (s.n_heads + h) * hd, cos, sin, hd, k);
  float* kh = kc + li * s.k_layer + h * s.k_head;
  float* vh = vc + li * s.v_layer + h * s.v_head;
  for (int64_t t = 0; t < pos; ++t) scores[t] = 0.f;
  for (int64_t d = 0; d < hd; ++d) {  // q @ K^T, a row of K^T at a time (contiguous over positions)
    const float qd = q[d];
    const float* row = kh + d * s.k_dim;
    for (int64_t t = 0; t < pos; ++t) scores[t] += qd * row[t];
  }
  float self = 0.f;
  for (int64_t d = 0; d < hd; ++d) self += q[d] * k[d];
  scores[pos] = self;
  float top = scores[0];
  for (int64_t t = 1; t <= pos; ++t) top = scores[t] > top ? scores[t] : top;
  float total = 0.f;
  for (int64_t t = 0; t <= pos; ++t) {
    scores[t] = std::exp(scores[t] - top);
    total += scores[t];
  }
  for (int64_t d = 0; d < hd; ++d) out[d] = scores[pos] * v_new[d];
  for (int64_t t = 0; t < pos; ++t) {
    const float p = scores[t];
    const float* row = vh + t * s.v_pos;
    for (int64_t d = 0; d < hd; ++d) out[d] += p * row[d];
  }
  const float inv = 1.f / total;
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
