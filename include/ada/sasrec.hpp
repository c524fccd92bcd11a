// SASRec (Kang & McAuley 2018) exactly as the reference runs it (reference-spec.md section 2.3):
// item + absolute position embedding -> LayerNorm -> dropout -> post-LN Transformer layers
// (causal multi-head attention with a key-padding mask, FFN) -> user vector at the last position.
//
// Padding is not work: a batch is packed as a jagged set of tokens. A non-empty history of n items
// (the last max_len kept) occupies positions max_len-n .. max_len-1 and only those tokens are computed:
// in the reference, padded keys get -10000 added before the softmax, so exp() makes their weight
// exactly 0 and valid positions never see padding. An empty history keeps all max_len padding tokens,
// since there every key (later ones too) is masked and the reference attends over all of them. The last layer
// computes queries, FFN and LayerNorms only at the final position, the one that becomes the user vector.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "ada/backend.hpp"
#include "ada/data.hpp"
#include "ada/params.hpp"
#include "ada/tensor.hpp"

namespace ada {

struct SasRecConfig {
  int32_t n_items = 0;  // including padding id 0
  int hidden = 64;
  int max_len = 50;
  int layers = 2;
  int heads = 16;
  int inner = 512;
  Activation activation = Activation::kSilu;
  double ln_eps = 1e-10;
  float dropout = 0.1777f;  // embeddings, attention probabilities, attention output, FFN output
  double init_std = 0.02;
  double bias_std = 0.1;
  bool item_bias = true;
};

template <class T>
class SasRec {
 public:
  SasRec(const SasRecConfig& cfg, Backend<T>& be);
  const SasRecConfig& config() const { return cfg_; }
  ParamStore<T>& params() { return params_; }
  const ParamStore<T>& params() const { return params_; }
  Backend<T>& backend() { return be_; }

  // N(0, init_std) for Linear/Embedding weights, zero biases, LayerNorm 1/0, item bias N(0, bias_std),
  // padding row zero (reference-spec 2.2). Deterministic in seed.
  void init(uint64_t seed);

  // User vectors [B, D] for B histories (any length: the last max_len items are used; item ids must
  // be in 1..n_items-1). training = dropout on (masks from (seed, step)) and activations kept for
  // backward; otherwise nothing is kept.
  void forward(const Ragged& histories, bool training, uint64_t seed, uint64_t step, T* user_out);
  // Accumulates parameter gradients from d loss / d user vectors [B, D] of the last training forward.
  void backward(const T* d_user);

  const T* item_table() const { return params_.value(p_item_emb_); }
  const T* item_bias() const { return cfg_.item_bias ? params_.value(p_item_bias_) : nullptr; }
  T* item_table_grad() { return params_.grad(p_item_emb_); }
  T* item_bias_grad() { return cfg_.item_bias ? params_.grad(p_item_bias_) : nullptr; }

 private:
  struct LayerParams {
    int q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_w, ln1_b, f1_w, f1_b, f2_w, f2_b, ln2_w, ln2_b;
  };
  struct LayerActs {
    int64_t nq = 0;
    Buffer<T> in_q;  // last layer: layer input at the last tokens [S, D]; else unused
    Buffer<T> q, k, v, probs, att, r1, mean1, rstd1, h, f1, g, r2, mean2, rstd2, out;
  };
  uint64_t stream(uint32_t site) const;
  void build_layout(const Ragged& histories);

  SasRecConfig cfg_;
  Backend<T>& be_;
  ParamStore<T> params_;
  int p_item_emb_ = -1, p_item_bias_ = -1, p_pos_emb_ = -1, p_ln_w_ = -1, p_ln_b_ = -1;
  std::vector<LayerParams> lp_;

  // Activations of the last forward.
  bool training_ = false;
  uint64_t seed_ = 0, step_ = 0;
  std::vector<int64_t> tok_offsets_;
  std::vector<uint8_t> all_masked_;
  std::vector<int32_t> ids_, pos_;
  Buffer<T> x0_, mean0_, rstd0_, x1_, h0_;
  std::vector<LayerActs> acts_;
  struct Grads {
    Buffer<T> d_out, d_r2, d_h, d_g, d_f1, d_r1, d_att, d_q, d_k, d_v, d_in, d_in_q, d_x0;
  } grads_;
  JaggedLayout layout() const;
};

// Builds the layer names and shapes of the reference ("trm_encoder.layer.0...").
extern template class SasRec<float>;
extern template class SasRec<double>;

}  // namespace ada
