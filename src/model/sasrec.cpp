#include "ada/sasrec.hpp"

#include <algorithm>
#include <cmath>
#include <string>

#include "ada/rng.hpp"

namespace ada {

namespace {
template <class T>
void copy_into(Buffer<T>& dst, const Buffer<T>& src, DeviceMemory* mem) {
  dst.ensure(src.size(), mem);
  mem_copy(mem, dst.data(), src.data(), int64_t(src.size()));
}
}  // namespace

template <class T>
SasRec<T>::SasRec(const SasRecConfig& cfg, Backend<T>& be,
                  const std::function<void(ParamStore<T>&)>& add_params)
    : cfg_(cfg), be_(be), mem_(be.device_memory()) {
  ADA_CHECK(cfg.n_items >= 2, "SASRec: n_items must be >= 2 (padding + one item), got " << cfg.n_items);
  ADA_CHECK(cfg.hidden % cfg.heads == 0,
            "SASRec: hidden " << cfg.hidden << " is not a multiple of heads " << cfg.heads);
  ADA_CHECK(cfg.layers >= 1 && cfg.max_len >= 1, "SASRec: layers and max_len must be >= 1");
  const int64_t D = cfg.hidden, I = cfg.inner;
  p_item_emb_ = params_.add("item_embedding.weight", {cfg.n_items, D});
  if (cfg.item_bias) p_item_bias_ = params_.add("item_bias", {cfg.n_items});
  p_pos_emb_ = params_.add("position_embedding.weight", {cfg.max_len + 1, D});
  p_ln_w_ = params_.add("LayerNorm.weight", {D});
  p_ln_b_ = params_.add("LayerNorm.bias", {D});
  for (int l = 0; l < cfg.layers; ++l) {
    const std::string a = "trm_encoder.layer." + std::to_string(l) + ".multi_head_attention.";
    const std::string f = "trm_encoder.layer." + std::to_string(l) + ".feed_forward.";
    LayerParams p{};
    p.q_w = params_.add(a + "query.weight", {D, D});
    p.q_b = params_.add(a + "query.bias", {D});
    p.k_w = params_.add(a + "key.weight", {D, D});
    p.k_b = params_.add(a + "key.bias", {D});
    p.v_w = params_.add(a + "value.weight", {D, D});
    p.v_b = params_.add(a + "value.bias", {D});
    p.o_w = params_.add(a + "dense.weight", {D, D});
    p.o_b = params_.add(a + "dense.bias", {D});
    p.ln1_w = params_.add(a + "LayerNorm.weight", {D});
    p.ln1_b = params_.add(a + "LayerNorm.bias", {D});
    p.f1_w = params_.add(f + "dense_1.weight", {I, D});
    p.f1_b = params_.add(f + "dense_1.bias", {I});
    p.f2_w = params_.add(f + "dense_2.weight", {D, I});
    p.f2_b = params_.add(f + "dense_2.bias", {D});
    p.ln2_w = params_.add(f + "LayerNorm.weight", {D});
    p.ln2_b = params_.add(f + "LayerNorm.bias", {D});
    lp_.push_back(p);
  }
  if (add_params) add_params(params_);
  params_.finalize();
  params_.attach(mem_);
}

template <class T>
void SasRec<T>::init(uint64_t seed) {
  const auto& es = params_.entries();
  for (size_t i = 0; i < es.size(); ++i) {
    const ParamEntry& e = es[i];
    T* v = params_.value(int(i));
    const bool is_ln = e.name.find("LayerNorm") != std::string::npos;
    const bool is_bias_vec = e.name.size() > 5 && e.name.compare(e.name.size() - 5, 5, ".bias") == 0;
    const uint64_t st = rng_stream(RngPurpose::kInit, uint32_t(i));
    if (e.name == "item_bias") {
      for (int64_t j = 0; j < e.numel; ++j) v[j] = T(cfg_.bias_std * random_normal(seed, st, uint64_t(j)));
    } else if (is_ln) {
      std::fill(v, v + e.numel, is_bias_vec ? T(0) : T(1));
    } else if (is_bias_vec) {
      std::fill(v, v + e.numel, T(0));
    } else {
      for (int64_t j = 0; j < e.numel; ++j) v[j] = T(cfg_.init_std * random_normal(seed, st, uint64_t(j)));
    }
  }
  std::fill(params_.value(p_item_emb_), params_.value(p_item_emb_) + cfg_.hidden, T(0));
  params_.push();
}

template <class T>
uint64_t SasRec<T>::stream(const Context& ctx, uint32_t site) const {
  return rng_stream(RngPurpose::kDropout, uint32_t(ctx.step), ctx.site_base + site);
}

template <class T>
AttentionShape SasRec<T>::attention_shape(const Context& ctx, int layer, float dropout) const {
  AttentionShape sh;
  sh.layout = ctx.layout();
  sh.heads = cfg_.heads;
  sh.head_dim = cfg_.hidden / cfg_.heads;
  sh.last_only = layer == cfg_.layers - 1;  // the last layer only needs the user vector's position
  sh.dropout = dropout;
  sh.seed = ctx.seed;
  sh.stream = stream(ctx, uint32_t(1 + 4 * layer));
  return sh;
}

template <class T>
JaggedLayout SasRec<T>::Context::layout() const {
  JaggedLayout L;
  L.num_seqs = int64_t(all_masked.size());
  L.num_tokens = num_tokens();
  L.tok_offsets = tok_offsets.data();
  L.all_masked = all_masked.data();
  return L;
}

template <class T>
void SasRec<T>::prepare(Context& ctx, const Ragged& hist, bool training, uint64_t seed, uint64_t step,
                        uint32_t site_base) const {
  ctx.training = training;
  ctx.seed = seed;
  ctx.step = step;
  ctx.site_base = site_base;
  const int64_t S = int64_t(hist.rows());
  const int ml = cfg_.max_len;
  ctx.tok_offsets.assign(size_t(S) + 1, 0);
  ctx.all_masked.assign(size_t(S), 0);
  for (int64_t s = 0; s < S; ++s) {
    const int64_t n = std::min<int64_t>(hist.row_size(size_t(s)), ml);
    ctx.all_masked[size_t(s)] = n == 0;
    ctx.tok_offsets[size_t(s) + 1] = ctx.tok_offsets[size_t(s)] + (n == 0 ? ml : n);
  }
  const int64_t ntok = ctx.tok_offsets.back();
  ctx.ids.resize(size_t(ntok));
  ctx.pos.resize(size_t(ntok));
  for (int64_t s = 0; s < S; ++s) {
    const int64_t t0 = ctx.tok_offsets[size_t(s)], n = ctx.tok_offsets[size_t(s) + 1] - t0;
    const bool masked = ctx.all_masked[size_t(s)];
    const ItemId* end = hist.row_end(size_t(s));
    for (int64_t i = 0; i < n; ++i) {
      const int32_t id = masked ? 0 : end[i - n];
      ADA_CHECK(masked || (id > 0 && id < cfg_.n_items),
                "SASRec: item id " << id << " in history " << s << " is outside 1.." << cfg_.n_items - 1);
      ctx.ids[size_t(t0 + i)] = id;
      ctx.pos[size_t(t0 + i)] = int32_t(ml - n + i);
    }
  }
  ctx.layers.resize(size_t(cfg_.layers));
  ctx.op_ids = mem_stage(mem_, ctx.ids.data(), ntok, ctx.d_ids);
  ctx.op_pos = mem_stage(mem_, ctx.pos.data(), ntok, ctx.d_pos);
}

template <class T>
void SasRec<T>::forward(Context& ctx, const T* token_input, T* user_out) {
  const JaggedLayout L = ctx.layout();
  const int64_t S = L.num_seqs, Ntok = L.num_tokens, D = cfg_.hidden, I = cfg_.inner;
  const float p = ctx.training ? cfg_.dropout : 0.0f;
  const uint64_t seed = ctx.seed;
  ctx.external_input = token_input != nullptr;

  ctx.x0.ensure(size_t(Ntok * D), mem_);
  ctx.mean0.ensure(size_t(Ntok), mem_);
  ctx.rstd0.ensure(size_t(Ntok), mem_);
  ctx.x1.ensure(size_t(Ntok * D), mem_);
  ctx.h0.ensure(size_t(Ntok * D), mem_);
  if (token_input) {
    // x0 = pos_table[pos] + token_input
    be_.embedding_forward(ctx.x0.data(), ctx.op_pos, params_.dvalue(p_pos_emb_), nullptr, nullptr, Ntok, D);
    be_.add_inplace(ctx.x0.data(), token_input, Ntok * D);
  } else {
    be_.embedding_forward(ctx.x0.data(), ctx.op_ids, params_.dvalue(p_item_emb_), ctx.op_pos,
                          params_.dvalue(p_pos_emb_), Ntok, D);
  }
  be_.layernorm_forward(ctx.x1.data(), ctx.mean0.data(), ctx.rstd0.data(), ctx.x0.data(),
                        params_.dvalue(p_ln_w_), params_.dvalue(p_ln_b_), Ntok, D, T(cfg_.ln_eps));
  be_.dropout_forward(ctx.h0.data(), ctx.x1.data(), Ntok * D, p, seed, stream(ctx, 0));

  const T* in = ctx.h0.data();
  for (int l = 0; l < cfg_.layers; ++l) {
    const LayerParams& w = lp_[size_t(l)];
    LayerActs& a = ctx.layers[size_t(l)];
    const bool last = l == cfg_.layers - 1;
    const int64_t nq = last ? S : Ntok;
    a.nq = nq;
    const T* in_q = in;
    if (last) {
      a.in_q.ensure(size_t(S * D), mem_);
      be_.gather_last(a.in_q.data(), in, L, D);
      in_q = a.in_q.data();
    }
    a.q.ensure(size_t(nq * D), mem_);
    a.k.ensure(size_t(Ntok * D), mem_);
    a.v.ensure(size_t(Ntok * D), mem_);
    be_.linear_forward(a.q.data(), in_q, params_.dvalue(w.q_w), params_.dvalue(w.q_b), nq, D, D);
    be_.linear_forward(a.k.data(), in, params_.dvalue(w.k_w), params_.dvalue(w.k_b), Ntok, D, D);
    be_.linear_forward(a.v.data(), in, params_.dvalue(w.v_w), params_.dvalue(w.v_b), Ntok, D, D);
    const AttentionShape sh = attention_shape(ctx, l, p);
    a.probs.ensure(size_t(sh.prob_size()), mem_);
    a.att.ensure(size_t(nq * D), mem_);
    be_.attention_forward(a.att.data(), a.probs.data(), a.q.data(), a.k.data(), a.v.data(), sh);
    // r1 = dropout(att W_o^T + b_o) + in_q ; h = LN(r1)
    a.r1.ensure(size_t(nq * D), mem_);
    be_.linear_forward(a.r1.data(), a.att.data(), params_.dvalue(w.o_w), params_.dvalue(w.o_b), nq, D, D);
    be_.dropout_forward(a.r1.data(), a.r1.data(), nq * D, p, seed, stream(ctx, uint32_t(2 + 4 * l)));
    be_.add_inplace(a.r1.data(), in_q, nq * D);
    a.mean1.ensure(size_t(nq), mem_);
    a.rstd1.ensure(size_t(nq), mem_);
    a.h.ensure(size_t(nq * D), mem_);
    be_.layernorm_forward(a.h.data(), a.mean1.data(), a.rstd1.data(), a.r1.data(),
                          params_.dvalue(w.ln1_w), params_.dvalue(w.ln1_b), nq, D, T(cfg_.ln_eps));
    // r2 = dropout(act(h W1^T + b1) W2^T + b2) + h ; out = LN(r2)
    a.f1.ensure(size_t(nq * I), mem_);
    a.g.ensure(size_t(nq * I), mem_);
    be_.linear_forward(a.f1.data(), a.h.data(), params_.dvalue(w.f1_w), params_.dvalue(w.f1_b), nq, D, I);
    be_.activation_forward(a.g.data(), a.f1.data(), nq * I, cfg_.activation);
    a.r2.ensure(size_t(nq * D), mem_);
    be_.linear_forward(a.r2.data(), a.g.data(), params_.dvalue(w.f2_w), params_.dvalue(w.f2_b), nq, I, D);
    be_.dropout_forward(a.r2.data(), a.r2.data(), nq * D, p, seed, stream(ctx, uint32_t(3 + 4 * l)));
    be_.add_inplace(a.r2.data(), a.h.data(), nq * D);
    a.mean2.ensure(size_t(nq), mem_);
    a.rstd2.ensure(size_t(nq), mem_);
    a.out.ensure(size_t(nq * D), mem_);
    be_.layernorm_forward(a.out.data(), a.mean2.data(), a.rstd2.data(), a.r2.data(),
                          params_.dvalue(w.ln2_w), params_.dvalue(w.ln2_b), nq, D, T(cfg_.ln_eps));
    in = a.out.data();
  }
  // The last layer ran on the final tokens only, so its output rows are the user vectors.
  mem_copy(mem_, user_out, in, S * D);
}

template <class T>
void SasRec<T>::backward(Context& ctx, const T* d_user, T* d_token_input) {
  ADA_CHECK(ctx.training, "SASRec::backward without a training forward");
  ADA_CHECK(ctx.external_input == (d_token_input != nullptr),
            "SASRec::backward: d_token_input must be given exactly when forward took a token input");
  const JaggedLayout L = ctx.layout();
  const int64_t S = L.num_seqs, Ntok = L.num_tokens, D = cfg_.hidden, I = cfg_.inner;
  const float p = cfg_.dropout;
  const uint64_t seed = ctx.seed;

  Grads& gr = grads_;
  Buffer<T>&d_out = gr.d_out, &d_r2 = gr.d_r2, &d_h = gr.d_h, &d_g = gr.d_g, &d_f1 = gr.d_f1,
  &d_r1 = gr.d_r1, &d_att = gr.d_att, &d_q = gr.d_q, &d_k = gr.d_k, &d_v = gr.d_v, &d_in = gr.d_in,
  &d_in_q = gr.d_in_q, &d_x0 = gr.d_x0;
  d_out.ensure(size_t(S * D), mem_);  // gradient w.r.t. the current layer's output
  mem_copy(mem_, d_out.data(), d_user, S * D);
  for (int l = cfg_.layers - 1; l >= 0; --l) {
    const LayerParams& w = lp_[size_t(l)];
    LayerActs& a = ctx.layers[size_t(l)];
    const bool last = l == cfg_.layers - 1;
    const int64_t nq = a.nq;
    const T* in = l == 0 ? ctx.h0.data() : ctx.layers[size_t(l - 1)].out.data();
    const T* in_q = last ? a.in_q.data() : in;

    d_r2.ensure(size_t(nq * D), mem_);
    be_.layernorm_backward(d_r2.data(), params_.dgrad(w.ln2_w), params_.dgrad(w.ln2_b), d_out.data(),
                           a.r2.data(), params_.dvalue(w.ln2_w), a.mean2.data(), a.rstd2.data(), nq, D);
    copy_into(d_h, d_r2, mem_);  // residual branch
    // FFN branch: d_r2 -> dropout -> W2 -> act -> W1 -> h
    be_.dropout_backward(d_r2.data(), d_r2.data(), nq * D, p, seed, stream(ctx, uint32_t(3 + 4 * l)));
    d_g.ensure(size_t(nq * I), mem_);
    be_.linear_backward(d_g.data(), params_.dgrad(w.f2_w), params_.dgrad(w.f2_b), d_r2.data(),
                        a.g.data(), params_.dvalue(w.f2_w), nq, I, D, false);
    d_f1.ensure(size_t(nq * I), mem_);
    be_.activation_backward(d_f1.data(), d_g.data(), a.f1.data(), nq * I, cfg_.activation);
    be_.linear_backward(d_h.data(), params_.dgrad(w.f1_w), params_.dgrad(w.f1_b), d_f1.data(),
                        a.h.data(), params_.dvalue(w.f1_w), nq, D, I, true);
    d_r1.ensure(size_t(nq * D), mem_);
    be_.layernorm_backward(d_r1.data(), params_.dgrad(w.ln1_w), params_.dgrad(w.ln1_b), d_h.data(),
                           a.r1.data(), params_.dvalue(w.ln1_w), a.mean1.data(), a.rstd1.data(), nq, D);
    copy_into(d_in_q, d_r1, mem_);  // residual branch to the layer input (at the query rows)
    be_.dropout_backward(d_r1.data(), d_r1.data(), nq * D, p, seed, stream(ctx, uint32_t(2 + 4 * l)));
    d_att.ensure(size_t(nq * D), mem_);
    be_.linear_backward(d_att.data(), params_.dgrad(w.o_w), params_.dgrad(w.o_b), d_r1.data(),
                        a.att.data(), params_.dvalue(w.o_w), nq, D, D, false);
    const AttentionShape sh = attention_shape(ctx, l, p);
    d_q.ensure(size_t(nq * D), mem_);
    d_k.ensure(size_t(Ntok * D), mem_);
    mem_zero(mem_, d_k.data(), Ntok * D);
    d_v.ensure(size_t(Ntok * D), mem_);
    mem_zero(mem_, d_v.data(), Ntok * D);
    be_.attention_backward(d_q.data(), d_k.data(), d_v.data(), d_att.data(), a.probs.data(),
                           a.q.data(), a.k.data(), a.v.data(), sh);
    be_.linear_backward(d_in_q.data(), params_.dgrad(w.q_w), params_.dgrad(w.q_b), d_q.data(), in_q,
                        params_.dvalue(w.q_w), nq, D, D, true);
    d_in.ensure(size_t(Ntok * D), mem_);
    be_.linear_backward(d_in.data(), params_.dgrad(w.k_w), params_.dgrad(w.k_b), d_k.data(), in,
                        params_.dvalue(w.k_w), Ntok, D, D, false);
    be_.linear_backward(d_in.data(), params_.dgrad(w.v_w), params_.dgrad(w.v_b), d_v.data(), in,
                        params_.dvalue(w.v_w), Ntok, D, D, true);
    if (last)
      be_.scatter_last_add(d_in.data(), d_in_q.data(), L, D);
    else
      be_.add_inplace(d_in.data(), d_in_q.data(), Ntok * D);
    std::swap(d_out, d_in);
  }
  // Embedding stage: d_out is d h0.
  be_.dropout_backward(d_out.data(), d_out.data(), Ntok * D, p, seed, stream(ctx, 0));
  T* dx0 = d_token_input;
  if (!dx0) {
    d_x0.ensure(size_t(Ntok * D), mem_);
    dx0 = d_x0.data();
  }
  be_.layernorm_backward(dx0, params_.dgrad(p_ln_w_), params_.dgrad(p_ln_b_), d_out.data(),
                         ctx.x0.data(), params_.dvalue(p_ln_w_), ctx.mean0.data(), ctx.rstd0.data(), Ntok, D);
  be_.embedding_backward(d_token_input ? nullptr : params_.dgrad(p_item_emb_), params_.dgrad(p_pos_emb_), dx0,
                         ctx.op_ids, ctx.op_pos, Ntok, D);
}

template class SasRec<float>;
template class SasRec<double>;

}  // namespace ada
