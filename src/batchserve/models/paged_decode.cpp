// Paged decode attention on a CPU: one query token per row against its cached keys, read in place from the
// KV pool through the row's slots (no gathered copy), the query heads of a KV head sharing each key they read.
//
// Built on first use by models/paged_decode.py (torch.utils.cpp_extension, -O3 for this machine's ISA) and
// registered as batchserve::paged_decode, so eager steps and compiled graphs (inductor's C++ wrapper calls it
// through the dispatcher) run the same kernel. The plain-torch backend (gather + SDPA) is its reference.
//
// Work items are (row, key chunk) pairs: a row's keys are split into chunks when there are fewer rows than
// threads (flash-decoding's split-K), each chunk's softmax is kept unnormalized (its max, sum and weighted
// values), and the chunks of a row are merged at the end.

#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <c10/util/BFloat16.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace {

inline float load(float v) { return v; }

inline float load(c10::BFloat16 v) {  // bf16 is the high half of a float: a shift, which the compiler vectorizes
  const uint32_t bits = static_cast<uint32_t>(v.x) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

struct Shape {
  int64_t rows, width, kv_heads, group, head_dim;  // width: the key axis of key_slots / key_mask
  int64_t heads() const { return kv_heads * group; }
};

// scores [heads, n] -> exp(score - the head's max) in place, with each head's max and exp-sum.
inline void softmax_rows(float* scores, int64_t n, int64_t heads, float* max, float* sum) {
  for (int64_t h = 0; h < heads; ++h) {
    float* sh = scores + h * n;
    const float m = *std::max_element(sh, sh + n);
    float total = 0.f;
    for (int64_t j = 0; j < n; ++j) {
      sh[j] = std::exp(sh[j] - m);
      total += sh[j];
    }
    max[h] = m;
    sum[h] = total;
  }
}

// One chunk of one row: keys[0..n) (cache slots) attended by the row's queries q [heads, head_dim], already
// scaled. Writes the chunk's per-head max and exp-sum and its unnormalized weighted values acc [heads, head_dim].
template <typename T>
void attend_chunk(const float* q, const T* k_pool, const T* v_pool, const int64_t* keys, int64_t n, const Shape& s,
                  float* scores, float* max, float* sum, float* acc) {
  const int64_t hd = s.head_dim, heads = s.heads(), slot_size = s.kv_heads * hd;
  for (int64_t j = 0; j < n; ++j) {  // scores [heads, n]: each key's K/V of every KV head is one contiguous read
    const T* k = k_pool + keys[j] * slot_size;
    for (int64_t h = 0; h < heads; ++h) {
      const float* qh = q + h * hd;
      const T* kh = k + (h / s.group) * hd;
      float dot = 0.f;
      for (int64_t e = 0; e < hd; ++e) dot += qh[e] * load(kh[e]);
      scores[h * n + j] = dot;
    }
  }
  softmax_rows(scores, n, heads, max, sum);
  std::fill(acc, acc + heads * hd, 0.f);
  for (int64_t j = 0; j < n; ++j) {
    const T* v = v_pool + keys[j] * slot_size;
    for (int64_t h = 0; h < heads; ++h) {
      const float p = scores[h * n + j];
      const T* vh = v + (h / s.group) * hd;
      float* a = acc + h * hd;
      for (int64_t e = 0; e < hd; ++e) a[e] += p * load(vh[e]);
    }
  }
}

#if defined(__AVX512F__)
// The same chunk for a head_dim of V * 16 (64 and 128, the common ones) in AVX-512, key by key: a key's slot (K or
// V of every KV head) is read once, contiguously, converted to fp32 once for its group of query heads, and the
// slot PREFETCH_KEYS keys ahead is prefetched, since the keys of a row jump from block to block where a hardware
// prefetcher loses the stream. A wide bf16 decode's attention, memory-bound at long contexts, ran 1.4-1.6x the
// generic loop's speed with it (fp32: 1.03x; bench/RESULTS.md, session 29); the results are the same bits.
constexpr int64_t PREFETCH_KEYS = 4;

template <typename T>
inline void prefetch_slot(const T* slot, int64_t slot_size) {
  const char* bytes = reinterpret_cast<const char*>(slot);
  for (int64_t b = 0; b < slot_size * int64_t(sizeof(T)); b += 64) _mm_prefetch(bytes + b, _MM_HINT_T0);
}

inline __m512 load16(const float* p) { return _mm512_loadu_ps(p); }

inline __m512 load16(const c10::BFloat16* p) {  // 16 bf16 -> fp32: widen, shift into the high half
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// f(j, g, x) for each key j of keys[0..n) and each KV head g, x the head's V vectors of the key's slot in fp32;
// the slot PREFETCH_KEYS keys ahead is fetched meanwhile.
template <typename T, int V, typename F>
inline void for_each_slot(const T* pool, const int64_t* keys, int64_t n, const Shape& s, F&& f) {
  const int64_t slot_size = s.kv_heads * V * 16;
  for (int64_t j = 0; j < n; ++j) {
    const T* slot = pool + keys[j] * slot_size;
    if (j + PREFETCH_KEYS < n) prefetch_slot(pool + keys[j + PREFETCH_KEYS] * slot_size, slot_size);
    for (int64_t g = 0; g < s.kv_heads; ++g) {
      __m512 x[V];
      for (int v = 0; v < V; ++v) x[v] = load16(slot + (g * V + v) * 16);
      f(j, g, x);
    }
  }
}

template <typename T, int V>
void attend_chunk_avx512(const float* q, const T* k_pool, const T* v_pool, const int64_t* keys, int64_t n,
                         const Shape& s, float* scores, float* max, float* sum, float* acc) {
  constexpr int64_t hd = V * 16;
  for_each_slot<T, V>(k_pool, keys, n, s, [&](int64_t j, int64_t g, const __m512* k) {
    for (int64_t h = g * s.group; h < (g + 1) * s.group; ++h) {
      __m512 a = _mm512_mul_ps(_mm512_loadu_ps(q + h * hd), k[0]);
      for (int v = 1; v < V; ++v) a = _mm512_fmadd_ps(_mm512_loadu_ps(q + h * hd + v * 16), k[v], a);
      scores[h * n + j] = _mm512_reduce_add_ps(a);
    }
  });
  softmax_rows(scores, n, s.heads(), max, sum);
  std::fill(acc, acc + s.heads() * hd, 0.f);
  for_each_slot<T, V>(v_pool, keys, n, s, [&](int64_t j, int64_t g, const __m512* x) {
    for (int64_t h = g * s.group; h < (g + 1) * s.group; ++h) {
      const __m512 w = _mm512_set1_ps(scores[h * n + j]);
      float* a = acc + h * hd;
      for (int v = 0; v < V; ++v)
        _mm512_storeu_ps(a + v * 16, _mm512_fmadd_ps(w, x[v], _mm512_loadu_ps(a + v * 16)));
    }
  });
}
#endif

// A chunk in the fastest form this build has for its head_dim.
template <typename T>
void attend(const float* q, const T* k_pool, const T* v_pool, const int64_t* keys, int64_t n, const Shape& s,
            float* scores, float* max, float* sum, float* acc) {
#if defined(__AVX512F__)
  if (s.head_dim == 64) return attend_chunk_avx512<T, 4>(q, k_pool, v_pool, keys, n, s, scores, max, sum, acc);
  if (s.head_dim == 128) return attend_chunk_avx512<T, 8>(q, k_pool, v_pool, keys, n, s, scores, max, sum, acc);
#endif
  attend_chunk(q, k_pool, v_pool, keys, n, s, scores, max, sum, acc);
}

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__)
#define BATCHSERVE_PAGED_PREFILL 1
// A prompt chunk over its sequence's cached keys, in place and flash-style. Per KV head, a tile of up to
// PREFILL_TILE chunk tokens x that head's group of query heads makes the tile's rows, 16 to a vector (a row per
// lane), so a key's scores for 16 rows are hd broadcast FMAs, the online softmax (running max and sum) is lane-wise,
// and nothing is summed across lanes. Keys go PREFILL_KEYS at a time: their slots converted to fp32 once for all
// the tile's rows, and as many independent FMA chains. Token t of the chunk (position context + t) sees keys
// [context + t + 1 - window, context + t] (window 0: from key 0).
constexpr int64_t PREFILL_TILE = 16;
constexpr int PREFILL_KEYS = 8;

// exp(x) for x <= 0 (scores minus their running max): 2^(x log2 e) as 2^n times a degree-7 polynomial of the
// fraction (relative error about 1e-7); below -100 it is 2^-144, which is 0 next to any visible key's weight.
inline __m512 exp512(__m512 x) {
  const __m512 t = _mm512_mul_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.f)), _mm512_set1_ps(1.44269504088896341f));
  const __m512 n = _mm512_roundscale_ps(t, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_mul_ps(_mm512_sub_ps(t, n), _mm512_set1_ps(0.693147180559945309f));  // 2^(t-n) = e^f
  __m512 p = _mm512_set1_ps(1.f / 5040);
  for (const float c : {1.f / 720, 1.f / 120, 1.f / 24, 1.f / 6, 0.5f, 1.f, 1.f}) p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(c));
  return _mm512_scalef_ps(p, n);
}

template <typename T, int V>
void prefill_tile(const T* q, const T* k_pool, const T* v_pool, const int64_t* slots, int64_t context, int64_t window,
                  T* out, const Shape& s, float scale, int64_t g, int64_t t0, int64_t t1) {
  constexpr int64_t hd = V * 16;
  const int64_t heads = s.heads(), slot_size = s.kv_heads * hd, group = s.group;
  const int64_t rows = (t1 - t0) * group, vecs = (rows + 15) / 16;  // row r: token t0 + r / group, head r % group
  std::vector<float> qt(vecs * hd * 16, 0.f), ot(vecs * hd * 16, 0.f);  // [vec][e][lane]
  std::vector<int32_t> lo(vecs * 16, 0), hi(vecs * 16, 0);  // each row's visible keys [lo, hi); pad rows: none
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / group, v = r / 16, lane = r % 16;
    const T* qr = q + (t * heads + g * group + r % group) * hd;
    for (int64_t e = 0; e < hd; ++e) qt[(v * hd + e) * 16 + lane] = load(qr[e]) * scale;
    hi[r] = static_cast<int32_t>(context + t + 1);
    lo[r] = window > 0 ? static_cast<int32_t>(std::max<int64_t>(0, context + t + 1 - window)) : 0;
  }
  const int64_t first = *std::min_element(lo.begin(), lo.begin() + rows), last = context + t1;
  std::vector<__m512> m(vecs, _mm512_set1_ps(std::numeric_limits<float>::lowest())), l(vecs, _mm512_setzero_ps());
  alignas(64) float kb[PREFILL_KEYS][hd], vb[PREFILL_KEYS][hd];
  for (int64_t j0 = first; j0 < last; j0 += PREFILL_KEYS) {
    const int nk = static_cast<int>(std::min<int64_t>(PREFILL_KEYS, last - j0));
    for (int k = 0; k < PREFILL_KEYS; ++k) {
      const int64_t slot = slots[j0 + std::min(k, nk - 1)];  // past the last key: a copy, masked out below
      for (int v = 0; v < V; ++v) {
        _mm512_store_ps(kb[k] + v * 16, load16(k_pool + slot * slot_size + g * hd + v * 16));
        _mm512_store_ps(vb[k] + v * 16, load16(v_pool + slot * slot_size + g * hd + v * 16));
      }
    }
    for (int64_t v = 0; v < vecs; ++v) {
      const float* qv = qt.data() + v * hd * 16;
      __m512 sc[PREFILL_KEYS];
      for (int k = 0; k < PREFILL_KEYS; ++k) sc[k] = _mm512_setzero_ps();
      for (int64_t e = 0; e < hd; ++e) {
        const __m512 qe = _mm512_loadu_ps(qv + e * 16);
        for (int k = 0; k < PREFILL_KEYS; ++k) sc[k] = _mm512_fmadd_ps(qe, _mm512_set1_ps(kb[k][e]), sc[k]);
      }
      const __m512i lov = _mm512_loadu_si512(lo.data() + v * 16), hiv = _mm512_loadu_si512(hi.data() + v * 16);
      __mmask16 seen[PREFILL_KEYS];
      __m512 m_new = m[v];
      for (int k = 0; k < PREFILL_KEYS; ++k) {
        const __m512i j = _mm512_set1_epi32(static_cast<int32_t>(j0 + k));
        seen[k] = k < nk ? _mm512_cmple_epi32_mask(lov, j) & _mm512_cmplt_epi32_mask(j, hiv) : 0;
        m_new = _mm512_mask_max_ps(m_new, seen[k], m_new, sc[k]);
      }
      const __m512 rescale = exp512(_mm512_sub_ps(m[v], m_new));
      __m512 total = _mm512_setzero_ps();
      for (int k = 0; k < PREFILL_KEYS; ++k) {
        sc[k] = _mm512_maskz_mov_ps(seen[k], exp512(_mm512_sub_ps(sc[k], m_new)));
        total = _mm512_add_ps(total, sc[k]);
      }
      l[v] = _mm512_fmadd_ps(l[v], rescale, total);
      m[v] = m_new;
      float* ov = ot.data() + v * hd * 16;
      for (int64_t e = 0; e < hd; ++e) {
        __m512 o = _mm512_mul_ps(_mm512_loadu_ps(ov + e * 16), rescale);
        for (int k = 0; k < PREFILL_KEYS; ++k) o = _mm512_fmadd_ps(sc[k], _mm512_set1_ps(vb[k][e]), o);
        _mm512_storeu_ps(ov + e * 16, o);
      }
    }
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t t = t0 + r / group, v = r / 16, lane = r % 16;
    alignas(64) float lv[16];
    _mm512_store_ps(lv, l[v]);
    const float inv = lv[lane] > 0.f ? 1.f / lv[lane] : 0.f;  // a token with no visible key attends nothing: zeros
    T* o = out + (t * heads + g * group + r % group) * hd;
    for (int64_t e = 0; e < hd; ++e) o[e] = static_cast<T>(ot[(v * hd + e) * 16 + lane] * inv);
  }
}

template <typename T>
void paged_prefill_kernel(const T* q, const T* k_pool, const T* v_pool, const int64_t* slots, int64_t context,
                          int64_t window, T* out, const Shape& s, float scale) {
  // tiles of equal size, so that the (KV head, tile) items weigh the same on every thread
  const int64_t tiles = (s.rows + PREFILL_TILE - 1) / PREFILL_TILE;
  at::parallel_for(0, s.kv_heads * tiles, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t g = item % s.kv_heads, tile = item / s.kv_heads;
      const int64_t t0 = s.rows * tile / tiles, t1 = s.rows * (tile + 1) / tiles;
      if (s.head_dim == 64) prefill_tile<T, 4>(q, k_pool, v_pool, slots, context, window, out, s, scale, g, t0, t1);
      else prefill_tile<T, 8>(q, k_pool, v_pool, slots, context, window, out, s, scale, g, t0, t1);
    }
  });
}
#endif

template <typename T>
void paged_decode_kernel(const T* q, const T* k_pool, const T* v_pool, const int64_t* slots, const bool* mask,
                         T* out, const Shape& s, float scale, int64_t chunks) {
  const int64_t hd = s.head_dim, heads = s.heads(), width = s.width;
  // per work item: max [heads], sum [heads], acc [heads, head_dim]; empty chunks keep sum 0
  const int64_t item_size = heads * (2 + hd);
  std::vector<float> partial(s.rows * chunks * item_size, 0.f);
  at::parallel_for(0, s.rows * chunks, 1, [&](int64_t begin, int64_t end) {
    std::vector<int64_t> keys(width);
    std::vector<float> qf(heads * hd), scores(heads * width);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t row = item / chunks, chunk = item % chunks;
      int64_t n = 0;  // the row's visible keys, in order
      for (int64_t j = 0; j < width; ++j)
        if (mask[row * width + j]) keys[n++] = slots[row * width + j];
      const int64_t lo = n * chunk / chunks, hi = n * (chunk + 1) / chunks;
      if (lo == hi) continue;
      for (int64_t i = 0; i < heads * hd; ++i) qf[i] = load(q[row * heads * hd + i]) * scale;
      float* p = partial.data() + item * item_size;
      attend(qf.data(), k_pool, v_pool, keys.data() + lo, hi - lo, s, scores.data(), p, p + heads, p + 2 * heads);
    }
  });
  at::parallel_for(0, s.rows, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> acc(hd);
    for (int64_t row = begin; row < end; ++row) {
      for (int64_t h = 0; h < heads; ++h) {
        float m = std::numeric_limits<float>::lowest();  // finite: -ffast-math assumes no infinities
        for (int64_t c = 0; c < chunks; ++c) {
          const float* p = partial.data() + (row * chunks + c) * item_size;
          if (p[heads + h] > 0.f) m = std::max(m, p[h]);
        }
        float total = 0.f;
        std::fill(acc.begin(), acc.end(), 0.f);
        for (int64_t c = 0; c < chunks; ++c) {
          const float* p = partial.data() + (row * chunks + c) * item_size;
          if (!(p[heads + h] > 0.f)) continue;
          const float w = std::exp(p[h] - m);
          total += w * p[heads + h];
          const float* a = p + 2 * heads + h * hd;
          for (int64_t e = 0; e < hd; ++e) acc[e] += w * a[e];
        }
        const float inv = total > 0.f ? 1.f / total : 0.f;  // a row with no visible key attends nothing: zeros
        T* o = out + (row * heads + h) * hd;
        for (int64_t e = 0; e < hd; ++e) o[e] = static_cast<T>(acc[e] * inv);
      }
    }
  });
}

// The checks both ops make of their queries and caches; returns the caches' KV head count.
int64_t check_caches(const char* op, const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.sizes() == k_cache.sizes(), op,
              ": q [rows, heads, head_dim] and caches [slots, kv_heads, head_dim], got ", q.sizes(), ", ",
              k_cache.sizes(), ", ", v_cache.sizes());
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(), op,
              ": q and the caches must share a dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), op, ": the caches must be contiguous");
  const int64_t kv_heads = k_cache.size(1);
  TORCH_CHECK(q.size(1) % kv_heads == 0 && k_cache.size(2) == q.size(2), op, ": heads do not match");
  return kv_heads;
}

// run(T{}) with T the element type of q's dtype: float32 or bfloat16.
template <typename F>
void with_element_type(const char* op, const at::Tensor& q, F&& run) {
  if (q.scalar_type() == at::kFloat) {
    run(0.f);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, op, ": float32 or bfloat16, got ", q.scalar_type());
    run(c10::BFloat16());
  }
}

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& key_slots, const at::Tensor& key_mask, double scale) {
  const int64_t kv_heads = check_caches("paged_decode", q, k_cache, v_cache);
  TORCH_CHECK(key_slots.scalar_type() == at::kLong && key_mask.scalar_type() == at::kBool,
              "paged_decode: key_slots int64, key_mask bool");
  const int64_t rows = q.size(0), head_dim = q.size(2);
  TORCH_CHECK(key_slots.dim() == 2 && key_slots.size(0) == rows && key_mask.numel() == key_slots.numel(),
              "paged_decode: key_slots [rows, keys] and a key_mask of as many elements");
  const Shape s{rows, key_slots.size(1), kv_heads, q.size(1) / kv_heads, head_dim};
  const at::Tensor qc = q.contiguous(), slots = key_slots.contiguous(), mask = key_mask.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = rows >= threads ? 1 : (threads + rows - 1) / rows;
  with_element_type("paged_decode", q, [&](auto zero) {
    using T = decltype(zero);
    paged_decode_kernel<T>(qc.data_ptr<T>(), k_cache.data_ptr<T>(), v_cache.data_ptr<T>(), slots.data_ptr<int64_t>(),
                           mask.data_ptr<bool>(), out.data_ptr<T>(), s, static_cast<float>(scale), chunks);
  });
  return out;
}

bool paged_prefill_supported(int64_t head_dim) {
#if defined(BATCHSERVE_PAGED_PREFILL)
  return head_dim == 64 || head_dim == 128;
#else
  return false;
#endif
}

at::Tensor paged_prefill(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                         const at::Tensor& key_slots, int64_t context, int64_t window, double scale) {
  const int64_t kv_heads = check_caches("paged_prefill", q, k_cache, v_cache);
  const int64_t tokens = q.size(0), head_dim = q.size(2);
  TORCH_CHECK(paged_prefill_supported(head_dim), "paged_prefill: head_dim ", head_dim,
              " has no kernel in this build (AVX-512 BW/VL, head_dim 64 or 128)");
  TORCH_CHECK(key_slots.scalar_type() == at::kLong && key_slots.dim() == 1 &&
                  key_slots.size(0) == context + tokens && context >= 0 && window >= 0,
              "paged_prefill: key_slots int64 [context + tokens], context and window >= 0");
  const Shape s{tokens, key_slots.size(0), kv_heads, q.size(1) / kv_heads, head_dim};
  const at::Tensor qc = q.contiguous(), slots = key_slots.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
#if defined(BATCHSERVE_PAGED_PREFILL)
  with_element_type("paged_prefill", q, [&](auto zero) {
    using T = decltype(zero);
    paged_prefill_kernel<T>(qc.data_ptr<T>(), k_cache.data_ptr<T>(), v_cache.data_ptr<T>(),
                            slots.data_ptr<int64_t>(), context, window, out.data_ptr<T>(), s,
                            static_cast<float>(scale));
  });
#endif
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(batchserve, m) {
  m.def("paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor key_slots, Tensor key_mask, float scale) "
        "-> Tensor");
  m.def("paged_prefill(Tensor q, Tensor k_cache, Tensor v_cache, Tensor key_slots, int context, int window, "
        "float scale) -> Tensor");
  m.def("paged_prefill_supported(int head_dim) -> bool", &paged_prefill_supported);
}

TORCH_LIBRARY_IMPL(batchserve, CPU, m) {
  m.impl("paged_decode", &paged_decode);
  m.impl("paged_prefill", &paged_prefill);
}
