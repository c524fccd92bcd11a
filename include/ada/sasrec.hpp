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
#include <functional>
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
  struct LayerActs {
    int64_t nq = 0;
    Buffer<T> in_q;  // last layer: layer input at the last tokens [S, D]; else unused
    Buffer<T> q, k, v, probs, att, r1, mean1, rstd1, h, f1, g, r2, mean2, rstd2, out;
  };
  // What one forward pass keeps for its backward (tiny-cuda-nn style): the jagged layout of the
  // batch and every activation. Ada-Retrieval runs T forwards per step, each with its own Context.
  struct Context {
    bool training = false;
    uint64_t seed = 0, step = 0;
    uint32_t site_base = 0;  // dropout sites of this pass: site_base + 0 .. 4 * layers
    bool external_input = false;
    std::vector<int64_t> tok_offsets;  // (S+1)
    std::vector<uint8_t> all_masked;   // (S)
    std::vector<int32_t> ids, pos;     // (Ntok): item id (0 = padding) and absolute position
    Buffer<int32_t> d_ids, d_pos;      // their copies in the backend's memory (device backends)
    const int32_t* op_ids = nullptr;   // ids / pos as the backend's ops take them
    const int32_t* op_pos = nullptr;
    Buffer<T> x0, mean0, rstd0, x1, h0;
    std::vector<LayerActs> layers;
    JaggedLayout layout() const;
    int64_t num_tokens() const { return tok_offsets.empty() ? 0 : tok_offsets.back(); }
  };

  // `add_params` registers further tensors (e.g. Ada's adapters) in the same flat parameter store,
  // so the optimizer and checkpoints see one buffer.
  SasRec(const SasRecConfig& cfg, Backend<T>& be,
         const std::function<void(ParamStore<T>&)>& add_params = {});
  const SasRecConfig& config() const { return cfg_; }
  ParamStore<T>& params() { return params_; }
  const ParamStore<T>& params() const { return params_; }
  Backend<T>& backend() { return be_; }

  // N(0, init_std) for Linear/Embedding weights, zero biases, LayerNorm 1/0, item bias N(0, bias_std),
  // padding row zero (reference-spec 2.2). Deterministic in seed. Writes the host values and
  // pushes them to the device mirror.
  void init(uint64_t seed);

  // user_out, d_user, token_input and d_token_input below are arrays in the backend's memory
  // (backend().device_memory(); host for the CPU backend).
  // User vectors [B, D] for B histories (any length: the last max_len items are used; item ids must
  // be in 1..n_items-1). training = dropout on (masks from (seed, step)) and activations kept for
  // backward in the model's own context.
  void forward(const Ragged& histories, bool training, uint64_t seed, uint64_t step, T* user_out) {
    prepare(ctx_, histories, training, seed, step, 0);
    forward(ctx_, nullptr, user_out);
  }
  // Accumulates parameter gradients from d loss / d user vectors [B, D] of the last forward(above).
  void backward(const T* d_user) { backward(ctx_, d_user, nullptr); }

  // The two steps of a forward with an explicit context. prepare() lays out the batch (ctx.ids and
  // ctx.pos name each token). forward() then takes the token embeddings from `token_input`
  // [Ntok, D] when it is non-null (an adapter's output; positions are still added here), else from
  // the item table.
  void prepare(Context& ctx, const Ragged& histories, bool training, uint64_t seed, uint64_t step,
               uint32_t site_base) const;
  void forward(Context& ctx, const T* token_input, T* user_out);
  // Parameter gradients accumulate; with an external token input its gradient is written (=) to
  // d_token_input [Ntok, D], otherwise it goes to the item table.
  void backward(Context& ctx, const T* d_user, T* d_token_input);

  // The item table and bias as the backend's ops take them (device memory on a device backend).
  const T* item_table() const { return params_.dvalue(p_item_emb_); }
  const T* item_bias() const { return cfg_.item_bias ? params_.dvalue(p_item_bias_) : nullptr; }
  T* item_table_grad() { return params_.dgrad(p_item_emb_); }
  T* item_bias_grad() { return cfg_.item_bias ? params_.dgrad(p_item_bias_) : nullptr; }
  // Their host copies (current after params().pull() on a device backend).
  const T* host_item_table() const { return params_.value(p_item_emb_); }
  const T* host_item_bias() const { return cfg_.item_bias ? params_.value(p_item_bias_) : nullptr; }
  DeviceMemory* memory() const { return mem_; }
  // Dropout sites one forward uses (so callers running several forwards per step keep them apart).
  uint32_t sites_per_pass() const { return uint32_t(1 + 4 * cfg_.layers); }

 private:
  struct LayerParams {
    int q_w, q_b, k_w, k_b, v_w, v_b, o_w, o_b, ln1_w, ln1_b, f1_w, f1_b, f2_w, f2_b, ln2_w, ln2_b;
  };
  struct Grads {
    Buffer<T> d_out, d_r2, d_h, d_g, d_f1, d_r1, d_att, d_q, d_k, d_v, d_in, d_in_q, d_x0;
  };
  uint64_t stream(const Context& ctx, uint32_t site) const;
  AttentionShape attention_shape(const Context& ctx, int layer, float dropout) const;

  SasRecConfig cfg_;
  Backend<T>& be_;
  DeviceMemory* mem_ = nullptr;  // be_.device_memory()
  ParamStore<T> params_;
  int p_item_emb_ = -1, p_item_bias_ = -1, p_pos_emb_ = -1, p_ln_w_ = -1, p_ln_b_ = -1;
  std::vector<LayerParams> lp_;
  Context ctx_;  // the context of the single-pass forward()/backward() above
  Grads grads_;  // backward scratch, reused by every call so steady-state steps allocate nothing
};

// Builds the layer names and shapes of the reference ("trm_encoder.layer.0...").
extern template class SasRec<float>;
extern template class SasRec<double>;

}  // namespace ada
