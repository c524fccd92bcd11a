// The Backend interface: every numeric op the models use, as forward/backward pairs on raw
// row-major arrays (non-owning views). The model code calls only this interface and never branches
// on the device. CpuBackend (host/) is the specification; the CUDA backend (kernels/) implements the
// same ops and is tested against it.
//
// Conventions (llm.c style): outputs first, then inputs, then sizes. Parameter gradients are
// accumulated (+=); activation gradients are overwritten (=) unless the name says `accumulate`.
// Shapes use: M rows (tokens or users), I/O in/out features, C channels, D hidden, N items,
// H heads, S sequences.
#pragma once
#include <cstdint>
#include <memory>

#include "ada/data.hpp"

namespace ada {

class DeviceMemory;  // tensor.hpp

// Jagged batch of S sequences packed token by token: sequence s owns tokens
// [tok_offsets[s], tok_offsets[s+1]). `all_masked[s]` = 1 when every key of the sequence is padding.
// The reference's additive mask (1 - causal * key_valid) * -10000 is then -10000 for EVERY key, the
// causally later ones included, so such a sequence attends over all its tokens (softmax of the raw
// scores plus -10000, which in float32 also rounds them). Otherwise query i sees keys 0..i.
struct JaggedLayout {
  int64_t num_seqs = 0;
  int64_t num_tokens = 0;
  const int64_t* tok_offsets = nullptr;  // (S+1)
  const uint8_t* all_masked = nullptr;   // (S)
};

// Causal multi-head self-attention over a jagged batch. Queries are either every token (full) or
// only each sequence's last token (last_only: the final layer needs just the user vector).
struct AttentionShape {
  JaggedLayout layout;
  int heads = 1;
  int head_dim = 1;
  bool last_only = false;
  float dropout = 0.0f;      // on the attention probabilities
  uint64_t seed = 0;
  uint64_t stream = 0;       // dropout stream (rng.hpp)
  int64_t num_queries() const { return last_only ? layout.num_seqs : layout.num_tokens; }
  // Probability storage (floats/doubles) needed for backward: heads * sum over queries of key count.
  int64_t prob_size() const;
  // Keys summed over the queries of sequence s.
  int64_t seq_prob_count(int64_t s) const {
    const int64_t n = layout.tok_offsets[s + 1] - layout.tok_offsets[s];
    if (layout.all_masked[s]) return last_only ? n : n * n;
    return last_only ? n : n * (n + 1) / 2;
  }
};

// kRelu: max(x, 0), derivative 0 at x <= 0 (PyTorch's threshold backward).
enum class Activation { kSilu, kGelu, kRelu };

template <class T>
class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;

  // The memory the ops' arrays live in: null = host (the CPU backend); otherwise every T* /
  // int32_t* argument of an op is in this device memory (Buffer::ensure(n, device_memory())).
  virtual DeviceMemory* device_memory() { return nullptr; }

  // Exact top-k over items 1..N-1 of s_j = <U_b, table_j> + bias_j (bias may be null), skipping
  // row b's ids in `exclude` (a HOST list per row, ids in 0..N-1, any order): out_ids [B, k] and,
  // when out_scores is non-null, the scores [B, k], on the HOST, best first (higher score, then
  // smaller id). Throws when a row has fewer than k candidates. (The CPU backend scores with sgemm,
  // the CUDA one with in-order FMAs as topk.hpp's searchers: lists can differ at near ties.)
  virtual void topk(ItemId* out_ids, const T* U, int64_t B, const T* table, const T* bias, int64_t N,
                    int64_t D, int k, const Ragged& exclude, float* out_scores = nullptr) = 0;

  // C[M,N] = alpha * op(A) op(B) + beta * C, row-major. op(A) is [M,K], op(B) is [K,N].
  virtual void gemm(bool trans_a, bool trans_b, int64_t M, int64_t N, int64_t K, T alpha,
                    const T* A, const T* B, T beta, T* C) = 0;

  // out[M,O] = in[M,I] W[O,I]^T + b[O]   (b may be null)
  virtual void linear_forward(T* out, const T* in, const T* W, const T* b, int64_t M, int64_t I,
                              int64_t O) = 0;
  // din[M,I] = dout W (or += when accumulate), dW += dout^T in, db += colsum(dout). din may be null.
  virtual void linear_backward(T* din, T* dW, T* db, const T* dout, const T* in, const T* W,
                               int64_t M, int64_t I, int64_t O, bool accumulate) = 0;

  // out = (in - mean) * rstd * w + b per row of C; mean/rstd [M] saved for backward.
  virtual void layernorm_forward(T* out, T* mean, T* rstd, const T* in, const T* w, const T* b,
                                 int64_t M, int64_t C, T eps) = 0;
  virtual void layernorm_backward(T* din, T* dw, T* db, const T* dout, const T* in, const T* w,
                                  const T* mean, const T* rstd, int64_t M, int64_t C) = 0;

  // out[m] = table[ids[m]] (+ pos_table[pos[m]] when pos_table is non-null).
  virtual void embedding_forward(T* out, const int32_t* ids, const T* table, const int32_t* pos,
                                 const T* pos_table, int64_t M, int64_t D) = 0;
  // dtable[ids[m]] += dout[m] except id 0 (padding row: no gradient); dpos[pos[m]] += dout[m].
  virtual void embedding_backward(T* dtable, T* dpos_table, const T* dout, const int32_t* ids,
                                  const int32_t* pos, int64_t M, int64_t D) = 0;

  // Elementwise activation and its derivative: din = dout * act'(in).
  virtual void activation_forward(T* out, const T* in, int64_t n, Activation act) = 0;
  virtual void activation_backward(T* din, const T* dout, const T* in, int64_t n,
                                   Activation act) = 0;

  // Inverted dropout with the counter RNG: element i kept iff u(seed, stream, i) >= p, scaled 1/(1-p).
  // In place is allowed. backward applies the same mask to the gradient.
  virtual void dropout_forward(T* out, const T* in, int64_t n, float p, uint64_t seed,
                               uint64_t stream) = 0;
  virtual void dropout_backward(T* din, const T* dout, int64_t n, float p, uint64_t seed,
                                uint64_t stream) = 0;

  // y[i] += x[i]  (residual connections)
  virtual void add_inplace(T* y, const T* x, int64_t n) = 0;
  // out[s] = in[last token of s] (rows of D), and the scatter back (+=) for backward.
  virtual void gather_last(T* out, const T* in, const JaggedLayout& lay, int64_t D) = 0;
  virtual void scatter_last_add(T* din, const T* dout, const JaggedLayout& lay, int64_t D) = 0;

  // q: [Q, H*hd] (Q = shape.num_queries()), k, v: [num_tokens, H*hd]; out: [Q, H*hd];
  // probs: [shape.prob_size()] softmax probabilities before dropout, kept for backward.
  virtual void attention_forward(T* out, T* probs, const T* q, const T* k, const T* v,
                                 const AttentionShape& shape) = 0;
  // dq = (overwrite), dk and dv accumulate (+=).
  virtual void attention_backward(T* dq, T* dk, T* dv, const T* dout, const T* probs, const T* q,
                                  const T* k, const T* v, const AttentionShape& shape) = 0;

  // Sampled scorer + BCE (reference-spec 2.2, 3.4): logits[b,c] = <u_b, table[items[b,c]]> + bias;
  // loss = weight * mean_{b,c} BCE(sigmoid(logit), label) with column 0 positive (label 1), others 0.
  // Returns the loss; when du is non-null also writes du (=), and dtable/dbias (+=, padding row skipped).
  virtual double sampled_bce(T* logits, T* du, T* dtable, T* dbias, const T* u, const T* table,
                             const T* bias, const int32_t* items, int64_t B, int64_t C, int64_t D,
                             double weight) = 0;

  // ---- Ada-Retrieval adapter ops (reference-spec 3.1 IRA, 3.2 URA) ----

  // Learnable frequency filter (LowFilterLayer core, 3.1 steps 2-4) on R independent blocks of
  // K items x D channels (in/out [R, K, D] row-major):
  //   out[r] = irfft( rfft(in[r], dim=items, norm='ortho') * W, n=K, norm='ortho' )
  // W is complex [K/2+1, D] stored as real [K/2+1, D, 2] (real, imag). torch.fft semantics: irfft
  // ignores the imaginary part of the DC bin and, for even K, of the Nyquist bin (their gradients
  // are 0). Any K >= 1. Each block is read whole before it is written, so out may equal in.
  virtual void filter_forward(T* out, const T* in, const T* W, int64_t R, int64_t K, int64_t D) = 0;
  // din (overwrite) and dW (+=); din may equal dout.
  virtual void filter_backward(T* din, T* dW, const T* dout, const T* in, const T* W, int64_t R,
                               int64_t K, int64_t D) = 0;

  // Context-aware attention (3.1): single head, no projections, no mask, no dropout. Row b has the
  // queries X[q_offsets[b] .. q_offsets[b+1]) (rows of D; a row may have none) and the context
  // C[b] = Nc rows of D (C is [B, Nc, D], Nc >= 1):
  //   P = softmax_j( X C^T / sqrt(D) ),  out = P C      probs: [total_q, Nc] kept for backward.
  virtual void context_attention_forward(T* out, T* probs, const T* X, const T* C,
                                         const int64_t* q_offsets, int64_t B, int64_t Nc,
                                         int64_t D) = 0;
  // dX (overwrite), dC (+=).
  virtual void context_attention_backward(T* dX, T* dC, const T* dout, const T* probs, const T* X,
                                          const T* C, const int64_t* q_offsets, int64_t B,
                                          int64_t Nc, int64_t D) = 0;

  // GRU cell, PyTorch nn.GRU (gate order r, z, n), given gi = x W_ih^T + b_ih and
  // gh = h W_hh^T + b_hh (both [B, 3D], from linear_forward):
  //   r = sigmoid(gi_r + gh_r), z = sigmoid(gi_z + gh_z), n = tanh(gi_n + r * gh_n),
  //   h_new = (1 - z) * n + z * h_prev.
  // gates [B, 3D] stores (r, z, n) for backward.
  virtual void gru_cell_forward(T* h_new, T* gates, const T* gi, const T* gh, const T* h_prev,
                                int64_t B, int64_t D) = 0;
  // d_gi, d_gh [B, 3D] and d_hprev [B, D], all overwritten.
  virtual void gru_cell_backward(T* d_gi, T* d_gh, T* d_hprev, const T* d_hnew, const T* gates,
                                 const T* gh, const T* h_prev, int64_t B, int64_t D) = 0;

  // out[M, Da+Db] = [a | b] row by row; split_cols_add is its backward: da += dout[:, :Da],
  // db += dout[:, Da:] (either may be null: skipped).
  virtual void concat_cols(T* out, const T* a, const T* b, int64_t M, int64_t Da, int64_t Db) = 0;
  virtual void split_cols_add(T* da, T* db, const T* dout, int64_t M, int64_t Da, int64_t Db) = 0;

  // Global gradient norm over n values.
  virtual double sum_squares(const T* x, int64_t n) = 0;
  virtual void scale(T* x, int64_t n, T s) = 0;
  // PyTorch Adam (no weight decay): step is 1-based.
  virtual void adam_update(T* param, T* m, T* v, const T* grad, int64_t n, double lr, double beta1,
                           double beta2, double eps, int64_t step) = 0;
};

template <class T>
std::unique_ptr<Backend<T>> make_cpu_backend();

}  // namespace ada
