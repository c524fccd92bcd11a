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

// The user representation adapter's tensors (Backend::user_adapter_forward/backward, 3.2), D hidden:
// parameters (or, in UserAdapterTensors<T*> for the backward, their gradients, accumulated +=)
//   w_ih, w_hh [3D, D], b_ih, b_hh [3D] (GRU, gates r, z, n); w1 [2D, 2D], b1 [2D]; w2 [D, 2D],
//   b2 [D] (MLP); ln_w, ln_b [D] (ffn_LayerNorm).
template <class P>
struct UserAdapterTensors {
  P w_ih = nullptr, b_ih = nullptr, w_hh = nullptr, b_hh = nullptr, w1 = nullptr, b1 = nullptr,
    w2 = nullptr, b2 = nullptr, ln_w = nullptr, ln_b = nullptr;
};
// What user_adapter_forward saves for user_adapter_backward (B rows, t steps):
//   hs [t+1, B, D]: h_0 = 0, h_1 .. h_t;  gates [t, B, 3D]: (r, z, n) per step;
//   gh [t, B, 3D]: h_s W_hh^T + b_hh per step (the backward reads its n part);
//   a1r [B, 2D]: relu(W1 [v; h_t] + b1) (relu' is taken as a1r > 0, which is a1 > 0);
//   r2 [B, D]: the LayerNorm input v + dropout(a2);  mean, rstd [B]: its statistics.
template <class T>
struct UserAdapterSaved {
  T *hs = nullptr, *gates = nullptr, *gh = nullptr, *a1r = nullptr, *r2 = nullptr, *mean = nullptr,
    *rstd = nullptr;
};
// Round t >= 1 of the adapter over B rows of D; dropout p on a2 with (seed, stream), element i of
// the [B, D] tensor; LayerNorm eps.
struct UserAdapterShape {
  int64_t B = 0, D = 0;
  int t = 1;
  float p = 0.0f;
  uint64_t seed = 0, stream = 0;
  double eps = 1e-12;
};
// Elements of the `work` scratch both user adapter ops need (any content, overwritten).
inline int64_t user_adapter_work_size(const UserAdapterShape& s) {
  return s.B * s.D * (20 + 6 * int64_t(s.t)) + 64;
}

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

  // The learnable-filter block of IRA (3.1, LowFilterLayer) as one op, on R blocks of K rows x D
  // channels (n = R*K rows; every [n, D] array row-major, block r = rows r*K .. r*K+K-1):
  //   F  = filter_forward(E; cw)                  cw [K/2+1, D, 2] (the complex weight)
  //   G  = F dense_w^T + dense_b                  dense_w [D, D] (out, in), dense_b [D]; not kept
  //   Rr = dropout(G; p, seed, stream) + E        the counter RNG over the [n, D] tensor
  //   Et = LayerNorm(Rr; ln_w, ln_b, eps)         ln_w, ln_b [D]
  // Written (=): Et [n, D], and for backward F [n, D], Rr [n, D] (the LayerNorm input), mean and
  // rstd [n]. The backward needs exactly these (with E, the weights and the dropout arguments).
  // No argument may alias another. Any K >= 1, D >= 1, R >= 0. The default definition
  // (src/core/fused_filter.cpp) is the composition of the primitive ops above, the sequence the
  // model ran before this op existed; backends may override it with a fused kernel computing the
  // same function (the CUDA one: kernels/fused_filter.cu).
  virtual void filter_block_forward(T* Et, T* F, T* Rr, T* mean, T* rstd, const T* E, const T* cw,
                                    const T* dense_w, const T* dense_b, const T* ln_w,
                                    const T* ln_b, int64_t R, int64_t K, int64_t D, T eps, float p,
                                    uint64_t seed, uint64_t stream);
  // Backward of filter_block_forward given dEt [n, D]: dE [n, D] (overwrite) = the full gradient
  // to E (the residual's plus the filter branch's); d_cw, d_dense_w, d_dense_b, d_ln_w, d_ln_b
  // (+=, shapes of their parameters). E, F, Rr, mean, rstd as the forward wrote them; p, seed,
  // stream as in the forward. dE may not alias any input; dEt is only read.
  virtual void filter_block_backward(T* dE, T* d_cw, T* d_dense_w, T* d_dense_b, T* d_ln_w,
                                     T* d_ln_b, const T* dEt, const T* E, const T* F, const T* Rr,
                                     const T* mean, const T* rstd, const T* cw, const T* dense_w,
                                     const T* ln_w, int64_t R, int64_t K, int64_t D, float p,
                                     uint64_t seed, uint64_t stream);

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

  // The context-aware attention block of IRA (3.1) as one op: with Ntok = q_offsets[B] tokens,
  //   att = context_attention(Q, C)              Q = X when `attention`, else zeros (the softmax is
  //                                              then uniform: att = the mean of the context rows)
  //   r   = dropout(att, p, seed, stream) + X    the counter RNG over the [Ntok, D] tensor
  //   out = LayerNorm(r; ln_w, ln_b, eps)
  // Shapes: X, out, r [Ntok, D]; C [B, Nc, D] (Nc >= 1); probs [Ntok, Nc]; mean, rstd [Ntok];
  // ln_w, ln_b [D]; q_offsets is the jagged row split (host, as context_attention_forward's).
  // Written (=): out, and for backward probs (softmax before dropout), r (the LayerNorm input),
  // mean, rstd. The backward needs exactly these (with X, C, ln_w and the dropout arguments).
  // No argument may alias another. The default definition (src/core/fused_context.cpp) is the
  // composition of the primitive ops above, the sequence the model ran before this op existed;
  // backends may override it with a fused kernel computing the same function.
  virtual void context_block_forward(T* out, T* probs, T* r, T* mean, T* rstd, const T* X,
                                     const T* C, const T* ln_w, const T* ln_b,
                                     const int64_t* q_offsets, int64_t B, int64_t Nc, int64_t D,
                                     bool attention, float p, uint64_t seed, uint64_t stream,
                                     T eps);
  // Backward of context_block_forward given d out [Ntok, D]: dX (overwrite) = the full gradient to
  // X, the residual's plus (when `attention`) the queries'; dC [B, Nc, D] (+=); d_ln_w, d_ln_b [D]
  // (+=). probs, r, mean, rstd as the forward wrote them; p, seed, stream as in the forward. dX
  // may not alias any input.
  virtual void context_block_backward(T* dX, T* dC, T* d_ln_w, T* d_ln_b, const T* dout,
                                      const T* probs, const T* r, const T* mean, const T* rstd,
                                      const T* X, const T* C, const T* ln_w,
                                      const int64_t* q_offsets, int64_t B, int64_t Nc, int64_t D,
                                      bool attention, float p, uint64_t seed, uint64_t stream);

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

  // The user representation adapter (URA, 3.2) at round t = sh.t >= 1, GRU + MLP configuration:
  //   h_0 = 0;  h_{s+1} = gru_cell(users[s] W_ih^T + b_ih, h_s W_hh^T + b_hh, h_s)   s = 0 .. t-1
  //   a1r = relu(W1 [v; h_t] + b1);  a2 = W2 a1r + b2
  //   r2  = dropout(a2, p, seed, stream) + v;  out = LayerNorm(r2; ln_w, ln_b, eps)
  // users [t, B, D] (users[s] at users + s*B*D), v [B, D], out [B, D]. Written (=): out and every
  // array of `saved` (UserAdapterSaved: exactly what the backward reads, besides users, v and the
  // parameters). work: user_adapter_work_size(sh) elements of scratch. No argument may alias another.
  // The default definition (src/core/fused_user.cpp) is the composition of the primitive ops above,
  // the sequence the model ran before this op existed (the CPU backend uses it); backends may
  // override it with a fused kernel computing the same function.
  virtual void user_adapter_forward(T* out, const UserAdapterSaved<T>& saved, T* work,
                                    const T* users, const T* v,
                                    const UserAdapterTensors<const T*>& w,
                                    const UserAdapterShape& sh);
  // Backward given d out [B, D]: d_v [B, D] (overwrite: the residual's and the MLP's gradient),
  // d_users [t, B, D] (+=), every parameter gradient of g (+=). saved as the forward wrote it (read
  // only), users, v, w and sh as in the forward. work: user_adapter_work_size(sh) elements of
  // scratch. No output may alias an input or another output.
  virtual void user_adapter_backward(T* d_v, T* d_users, const UserAdapterTensors<T*>& g, T* work,
                                     const T* d_out, const UserAdapterSaved<T>& saved,
                                     const T* users, const T* v,
                                     const UserAdapterTensors<const T*>& w,
                                     const UserAdapterShape& sh);

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
