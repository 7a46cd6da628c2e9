// Attention planning (see attention.hpp): the recursive split of the causal triangle into strided-batched blocks.
#include "backend/attention.hpp"

#include "common/assert.hpp"

namespace twinstep::backend {

AttentionPlan plan_attention(const schedule::Attention& a) {
  TWINSTEP_ASSERT(a.heads_kv > 0 && a.heads_q % a.heads_kv == 0, "attention heads_q must be a multiple of heads_kv");
  AttentionPlan p;
  p.bh = a.batch * a.heads_kv;
  p.group = a.heads_q / a.heads_kv;
  p.seq_q = a.seq_q;
  p.seq_kv = a.seq_kv;
  p.head_dim = a.head_dim;
  p.causal = a.causal;
  const std::uint64_t square = p.seq_q * p.group * p.seq_kv;
  if (!a.causal || a.seq_q != a.seq_kv || a.seq_q % kAttentionSplit != 0 ||
      a.seq_q / kAttentionSplit < kAttentionMinLeaf) {
    p.leaf = p.seq_q;
    p.score_stride = square;
    p.blocks.push_back({0, p.seq_q, 0, p.seq_kv, p.seq_q});
    return p;
  }
  // Causal, square: level by level, each diagonal tile of `tile` positions becomes kAttentionSplit tiles of
  // tile/kAttentionSplit plus the strips left of them (sub-row r sees the r sub-tiles before its own).
  std::vector<AttentionBlock> strips;
  std::uint64_t tile = p.seq_q;
  for (int level = 0; level < kAttentionMaxLevels; ++level) {
    if (tile % kAttentionSplit != 0 || tile / kAttentionSplit < kAttentionMinLeaf) break;
    const std::uint64_t sub = tile / kAttentionSplit;
    for (std::uint64_t r = 1; r < kAttentionSplit; ++r) strips.push_back({r * sub, sub, 0, r * sub, tile});
    tile = sub;
  }
  p.leaf = tile;
  p.score_stride = square + p.seq_q;
  p.blocks.push_back({0, tile, 0, tile, tile});  // the diagonal tiles: every row and every key once
  p.blocks.insert(p.blocks.end(), strips.begin(), strips.end());
  return p;
}

double planned_attention_flops(const AttentionPlan& plan, bool backward) {
  double area = 0;  // score elements computed, over every tile and bh
  for (const auto& b : plan.blocks) {
    const double tiles = static_cast<double>(plan.bh) * static_cast<double>(plan.seq_q / b.tile);
    area += tiles * static_cast<double>(b.rows * plan.group) * static_cast<double>(b.keys);
  }
  const double per_gemm = 2.0 * area * static_cast<double>(plan.head_dim);
  return per_gemm * (backward ? 5.0 : 2.0);
}

std::uint64_t attention_score_elements(const AttentionPlan& plan) { return plan.bh * plan.score_stride; }

AttentionBufferBytes attention_buffer_bytes(const schedule::Attention& a) {
  const std::uint64_t e = schedule::dtype_bytes(a.dtype);
  AttentionBufferBytes b;
  b.q = a.batch * a.heads_q * a.seq_q * a.head_dim * e;
  b.k = a.batch * a.heads_kv * a.seq_kv * a.head_dim * e;
  b.s = attention_score_elements(plan_attention(a)) * e;
  return b;
}

namespace {

/// Where block `b` starts in each operand of one tile, and how far apart its tiles are (elements).
struct BlockGeometry {
  std::uint64_t rows_off = 0, keys_off = 0, s_off = 0;  // Q/O/dO/dQ rows; K/V/dK/dV rows; S
  long long rows_stride = 0, keys_stride = 0, s_stride = 0;
  std::uint64_t batch = 0, m = 0, n = 0;  // tiles over every bh; query rows (positions x group); keys
};

BlockGeometry geometry(const AttentionPlan& p, const AttentionBlock& b) {
  const std::uint64_t g = p.group, d = p.head_dim, skv = p.seq_kv;
  BlockGeometry x;
  x.rows_off = b.row0 * g * d;
  x.keys_off = b.key0 * d;
  x.s_off = b.row0 * g * skv + b.key0;
  const bool whole = b.tile == p.seq_q;  // one tile per bh
  x.rows_stride = static_cast<long long>(b.tile * g * d);
  x.keys_stride = static_cast<long long>((whole ? p.seq_kv : b.tile) * d);
  x.s_stride = static_cast<long long>(whole ? p.score_stride : b.tile * g * skv + b.tile);
  x.batch = p.bh * (p.seq_q / b.tile);
  x.m = b.rows * g;
  x.n = b.keys;
  return x;
}

const char* at(const void* base, std::uint64_t elements, std::uint64_t esz) {
  return static_cast<const char*>(base) + elements * esz;
}

}  // namespace

AttentionCalls attention_calls(const schedule::Attention& a, const AttentionBuffers& buf) {
  const AttentionPlan p = plan_attention(a);
  const std::uint64_t e = schedule::dtype_bytes(a.dtype);
  const std::uint64_t d = p.head_dim, skv = p.seq_kv;
  const cudaDataType_t t = cuda_dtype(a.dtype);
  AttentionCalls c;
  c.backward = a.backward;
  c.scores_buffer = buf.s;
  c.dtype = kernel_dtype(a.dtype).value_or(KernelDType::kBF16);
  c.softmax.mats = p.bh;
  c.softmax.rows = p.seq_q * p.group;
  c.softmax.cols = skv;
  c.softmax.ld = skv;
  c.softmax.mat_stride = p.score_stride;
  c.softmax.group = p.group;
  c.softmax.causal = p.causal;
  c.softmax.key_offset = p.seq_kv >= p.seq_q ? p.seq_kv - p.seq_q : 0;
  c.softmax.leaf = p.leaf;
  for (std::size_t i = 0; i < p.blocks.size(); ++i) {
    const BlockGeometry x = geometry(p, p.blocks[i]);
    const float acc = i == 0 ? 0.0f : 1.0f;  // blocks after the first add to what the first wrote
    auto make = [&](bool ta, bool tb, std::uint64_t m, std::uint64_t n, std::uint64_t k, const void* A,
                    std::uint64_t lda, long long sa, const void* B, std::uint64_t ldb, long long sb, void* C,
                    std::uint64_t ldc, long long sc, float beta) {
      GemmCall g = plain_gemm(m, n, k, ta, tb, A, B, C, x.batch, t);  // then the block's strides within the buffers
      g.lda = lda;
      g.ldb = ldb;
      g.ldc = ldc;
      g.stride_a = sa;
      g.stride_b = sb;
      g.stride_c = sc;
      g.beta = beta;
      return g;
    };
    auto* s_blk = const_cast<char*>(at(buf.s, x.s_off, e));
    // [rows, d] x [keys, d]^T -> S block (scores; dP)
    auto score_like = [&](const void* rows_buf, const void* keys_buf) {
      return make(false, true, x.m, x.n, d, at(rows_buf, x.rows_off, e), d, x.rows_stride, at(keys_buf, x.keys_off, e),
                  d, x.keys_stride, s_blk, skv, x.s_stride, 0.0f);
    };
    // S block [rows, keys] x [keys, d] -> rows (O; dQ)
    auto rows_like = [&](const void* keys_buf, void* out) {
      return make(false, false, x.m, d, x.n, s_blk, skv, x.s_stride, at(keys_buf, x.keys_off, e), d, x.keys_stride,
                  const_cast<char*>(at(out, x.rows_off, e)), d, x.rows_stride, acc);
    };
    // S block^T [keys, rows] x [rows, d] -> keys (dV; dK)
    auto keys_like = [&](const void* rows_buf, void* out) {
      return make(true, false, x.n, d, x.m, s_blk, skv, x.s_stride, at(rows_buf, x.rows_off, e), d, x.rows_stride,
                  const_cast<char*>(at(out, x.keys_off, e)), d, x.keys_stride, acc);
    };
    c.scores.push_back(score_like(buf.q, buf.k));
    if (!a.backward) {
      c.out.push_back(rows_like(buf.v, buf.o));
    } else {
      c.dv.push_back(keys_like(buf.dout, buf.v));
      c.dp.push_back(score_like(buf.dout, buf.v));
      c.dq.push_back(rows_like(buf.k, buf.q));
      c.dk.push_back(keys_like(buf.q, buf.k));
    }
  }
  return c;
}

void run_attention(cublasHandle_t blas, cudaStream_t stream, const AttentionCalls& c) {
  for (const auto& g : c.scores) run_gemm(blas, g);
  launch_attention_softmax(c.scores_buffer, c.softmax, c.dtype, stream);
  if (!c.backward) {
    for (const auto& g : c.out) run_gemm(blas, g);
    return;
  }
  for (const auto& g : c.dv) run_gemm(blas, g);
  for (const auto& g : c.dp) run_gemm(blas, g);
  launch_attention_softmax(c.scores_buffer, c.softmax, c.dtype, stream);
  for (const auto& g : c.dq) run_gemm(blas, g);
  for (const auto& g : c.dk) run_gemm(blas, g);
}

}  // namespace twinstep::backend
