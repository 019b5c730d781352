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

at::Tensor paged_decode(const at::Tensor& q, const at::Tensor& k_cache, const at::Tensor& v_cache,
                        const at::Tensor& key_slots, const at::Tensor& key_mask, double scale) {
  TORCH_CHECK(q.dim() == 3 && k_cache.dim() == 3 && v_cache.sizes() == k_cache.sizes(),
              "paged_decode: q [rows, heads, head_dim] and caches [slots, kv_heads, head_dim], got ", q.sizes(),
              ", ", k_cache.sizes(), ", ", v_cache.sizes());
  TORCH_CHECK(q.scalar_type() == k_cache.scalar_type() && q.scalar_type() == v_cache.scalar_type(),
              "paged_decode: q and the caches must share a dtype");
  TORCH_CHECK(k_cache.is_contiguous() && v_cache.is_contiguous(), "paged_decode: the caches must be contiguous");
  TORCH_CHECK(key_slots.scalar_type() == at::kLong && key_mask.scalar_type() == at::kBool,
              "paged_decode: key_slots int64, key_mask bool");
  const int64_t rows = q.size(0), kv_heads = k_cache.size(1), head_dim = q.size(2);
  TORCH_CHECK(q.size(1) % kv_heads == 0 && k_cache.size(2) == head_dim, "paged_decode: heads do not match");
  TORCH_CHECK(key_slots.dim() == 2 && key_slots.size(0) == rows && key_mask.numel() == key_slots.numel(),
              "paged_decode: key_slots [rows, keys] and a key_mask of as many elements");
  const Shape s{rows, key_slots.size(1), kv_heads, q.size(1) / kv_heads, head_dim};
  const at::Tensor qc = q.contiguous(), slots = key_slots.contiguous(), mask = key_mask.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options());
  const int64_t threads = at::get_num_threads();
  const int64_t chunks = rows >= threads ? 1 : (threads + rows - 1) / rows;
  const auto run = [&](auto zero) {
    using T = decltype(zero);
    paged_decode_kernel<T>(qc.data_ptr<T>(), k_cache.data_ptr<T>(), v_cache.data_ptr<T>(), slots.data_ptr<int64_t>(),
                           mask.data_ptr<bool>(), out.data_ptr<T>(), s, static_cast<float>(scale), chunks);
  };
  if (q.scalar_type() == at::kFloat) {
    run(0.f);
  } else {
    TORCH_CHECK(q.scalar_type() == at::kBFloat16, "paged_decode: float32 or bfloat16, got ", q.scalar_type());
    run(c10::BFloat16());
  }
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(batchserve, m) {
  m.def("paged_decode(Tensor q, Tensor k_cache, Tensor v_cache, Tensor key_slots, Tensor key_mask, float scale) "
        "-> Tensor");
}

TORCH_LIBRARY_IMPL(batchserve, CPU, m) { m.impl("paged_decode", &paged_decode); }
