#include "ada/checkpoint.hpp"

#include <cstring>
#include <nlohmann/json.hpp>

#include "ada/check.hpp"

namespace ada {

using nlohmann::json;

std::string model_info_to_json(const ModelInfo& info) {
  const SasRecConfig& c = info.sasrec;
  json j;
  j["model"] = info.model;
  j["dataset"] = info.dataset;
  j["n_items"] = c.n_items;
  j["hidden"] = c.hidden;
  j["max_len"] = c.max_len;
  j["layers"] = c.layers;
  j["heads"] = c.heads;
  j["inner"] = c.inner;
  j["activation"] = c.activation == Activation::kSilu ? "silu" : "gelu";
  j["ln_eps"] = c.ln_eps;
  j["dropout"] = c.dropout;
  j["item_bias"] = c.item_bias;
  j["ada"] = info.ada;
  if (info.ada) {
    const AdaConfig& a = info.ada_cfg;
    j["rounds"] = a.rounds;
    j["total_k"] = a.total_k;
    j["lambda"] = a.lambda;
    j["ada_ln_eps"] = a.ln_eps;
    j["ablation"] = {{"filter", a.filter}, {"attention", a.attention}, {"ira", a.ira},
                     {"gru", a.gru},       {"mlp", a.mlp},             {"ura", a.ura}};
  }
  return j.dump();
}

ModelInfo model_info_from_json(const std::string& text, const std::string& where) {
  json j;
  try {
    j = json::parse(text);
  } catch (const std::exception& e) {
    ADA_FAIL(where << ": model configuration is not valid JSON: " << e.what());
  }
  ModelInfo info;
  try {
    info.model = j.value("model", "sasrec");
    info.dataset = j.value("dataset", "");
    SasRecConfig& c = info.sasrec;
    c.n_items = j.at("n_items").get<int32_t>();
    c.hidden = j.value("hidden", c.hidden);
    c.max_len = j.value("max_len", c.max_len);
    c.layers = j.value("layers", c.layers);
    c.heads = j.value("heads", c.heads);
    c.inner = j.value("inner", c.inner);
    const std::string act = j.value("activation", "silu");
    ADA_CHECK(act == "silu" || act == "gelu", where << ": unknown activation \"" << act << "\"");
    c.activation = act == "silu" ? Activation::kSilu : Activation::kGelu;
    c.ln_eps = j.value("ln_eps", c.ln_eps);
    c.dropout = j.value("dropout", c.dropout);
    c.item_bias = j.value("item_bias", c.item_bias);
    info.ada = j.value("ada", false);
    if (info.ada) {
      AdaConfig& a = info.ada_cfg;
      a.rounds = j.at("rounds");
      a.total_k = j.at("total_k");
      a.lambda = j.at("lambda");
      a.ln_eps = j.value("ada_ln_eps", a.ln_eps);
      const json ab = j.value("ablation", json::object());
      a.filter = ab.value("filter", true);
      a.attention = ab.value("attention", true);
      a.ira = ab.value("ira", true);
      a.gru = ab.value("gru", true);
      a.mlp = ab.value("mlp", true);
      a.ura = ab.value("ura", true);
    }
  } catch (const json::exception& e) {
    ADA_FAIL(where << ": bad model configuration: " << e.what());
  }
  ADA_CHECK(info.model == "sasrec", where << ": model \"" << info.model << "\" is not supported (sasrec)");
  return info;
}

void save_checkpoint(const std::string& path, const ParamStore<float>& params, const ModelInfo& info,
                     const std::map<std::string, TensorView>& extra,
                     const std::map<std::string, std::string>& extra_meta) {
  // views of the parameters and the extras: the file is written from them (a 1M-item model's
  // 256 MB table is not copied, nor the optimizer moments beside it)
  std::map<std::string, TensorView> tensors;
  for (size_t i = 0; i < params.entries().size(); ++i) {
    const ParamEntry& e = params.entries()[i];
    tensors[e.name] = view_f32(e.shape, params.value(int(i)));
  }
  for (const auto& [name, view] : extra) {
    ADA_CHECK(!tensors.count(name), "save_checkpoint: extra tensor " << name << " clashes with a parameter");
    tensors[name] = view;
  }
  std::map<std::string, std::string> meta = extra_meta;
  meta["ada_config"] = model_info_to_json(info);
  meta["format"] = "ada-retrieval";
  write_safetensors(path, tensors, meta);
}

namespace {

// checkpoint_info and load_params read a SafeTensors (all tensors in memory) or a SafeTensorsFile
// (tensors read when asked, F32 ones straight into the parameters) through these.
const std::vector<int64_t>& shape_of(const SafeTensors& s, const std::string& n) { return s.at(n).shape; }
const std::vector<int64_t>& shape_of(const SafeTensorsFile& s, const std::string& n) { return s.shape(n); }
const std::map<std::string, std::string>& metadata_of(const SafeTensors& s) { return s.metadata; }
const std::map<std::string, std::string>& metadata_of(const SafeTensorsFile& s) { return s.metadata(); }
std::vector<std::string> names_of(const SafeTensors& s) {
  std::vector<std::string> out;
  for (const auto& kv : s.tensors) out.push_back(kv.first);
  return out;
}
std::vector<std::string> names_of(const SafeTensorsFile& s) { return s.names(); }
// Tensor n's numel values as float into dst: F32 bytes copied as they are, other dtypes converted.
void copy_f32(const SafeTensors& s, const std::string& n, float* dst, int64_t numel) {
  const TensorBlob& b = s.at(n);
  if (b.dtype == DType::kF32 && b.data.size() == size_t(numel) * sizeof(float)) {
    if (numel > 0) std::memcpy(dst, b.data.data(), b.data.size());  // no converted copy
  } else {
    const std::vector<float> v = b.to_f32();
    std::copy(v.begin(), v.end(), dst);
  }
}
void copy_f32(const SafeTensorsFile& s, const std::string& n, float* dst, int64_t numel) {
  if (s.dtype(n) == DType::kF32) {  // (the header's checks: its bytes are numel floats)
    s.read_raw(n, dst);
  } else {
    const std::vector<float> v = s.blob(n).to_f32();
    std::copy(v.begin(), v.end(), dst);
  }
}

template <class Src>
ModelInfo info_from(const Src& st, const std::string& path) {
  const auto& meta = metadata_of(st);
  auto it = meta.find("ada_config");
  if (it != meta.end()) return model_info_from_json(it->second, path);
  // A reference (PyTorch) state dict: infer what the shapes say.
  ModelInfo info;
  SasRecConfig& c = info.sasrec;
  ADA_CHECK(st.has("item_embedding.weight"),
            path << ": no ada_config metadata and no item_embedding.weight: not a SASRec checkpoint");
  const auto& emb = shape_of(st, "item_embedding.weight");
  ADA_CHECK(emb.size() == 2, path << ": item_embedding.weight must be 2-D");
  c.n_items = int32_t(emb[0]);
  c.hidden = int(emb[1]);
  if (st.has("position_embedding.weight")) c.max_len = int(shape_of(st, "position_embedding.weight")[0]) - 1;
  c.layers = 0;
  while (st.has("trm_encoder.layer." + std::to_string(c.layers) + ".multi_head_attention.query.weight"))
    ++c.layers;
  ADA_CHECK(c.layers > 0, path << ": no trm_encoder layers found");
  const std::string f1 = "trm_encoder.layer.0.feed_forward.dense_1.weight";
  if (st.has(f1)) c.inner = int(shape_of(st, f1)[0]);
  c.item_bias = st.has("item_bias");
  // Reference Ada weights: the filter's frequency count gives k = 2 * (bins - 1) (even k assumed) and
  // T comes from the reference defaults (5 rounds, K = 100); metadata-less files cannot say more.
  if (st.has("low_filter.complex_weight") && st.has("post_trans_gru_layer.weight_ih_l0")) {
    info.ada = true;
    const auto& cw = shape_of(st, "low_filter.complex_weight");
    ADA_CHECK(cw.size() == 4, path << ": low_filter.complex_weight must be 4-D");
    const int k = int(2 * (cw[1] - 1));
    info.ada_cfg.total_k = k * info.ada_cfg.rounds;
  }
  return info;
}

template <class Src>
void load_from(ParamStore<float>& params, const Src& st, const std::string& path, bool allow_missing,
               std::vector<std::string>* ignored, std::vector<std::string>* missing) {
  // tensors the file lacks keep their current (device) values through the push below; when it has
  // them all, nothing needs to come back from the device first (256 MB for a 1M-item table)
  bool all_there = true;
  for (const ParamEntry& e : params.entries()) all_there = all_there && st.has(e.name);
  if (!all_there) params.pull();
  for (size_t i = 0; i < params.entries().size(); ++i) {
    const ParamEntry& e = params.entries()[i];
    if (!st.has(e.name)) {
      ADA_CHECK(allow_missing, path << ": tensor " << e.name << " is missing");
      if (missing) missing->push_back(e.name);
      continue;
    }
    const std::vector<int64_t>& shape = shape_of(st, e.name);
    ADA_CHECK(shape == e.shape, path << ": tensor " << e.name << " has shape " << json(shape).dump()
                                     << ", the model expects " << json(e.shape).dump());
    copy_f32(st, e.name, params.value(int(i)), e.numel);
  }
  if (ignored) {
    for (const std::string& name : names_of(st))
      if (params.find(name) < 0) ignored->push_back(name);
  }
  params.push();  // a model on a device trains on its mirror
}

}  // namespace

ModelInfo checkpoint_info(const SafeTensors& st, const std::string& path) { return info_from(st, path); }
ModelInfo checkpoint_info(const SafeTensorsFile& st, const std::string& path) { return info_from(st, path); }

void load_params(ParamStore<float>& params, const SafeTensors& st, const std::string& path, bool allow_missing,
                 std::vector<std::string>* ignored, std::vector<std::string>* missing) {
  load_from(params, st, path, allow_missing, ignored, missing);
}
void load_params(ParamStore<float>& params, const SafeTensorsFile& st, const std::string& path, bool allow_missing,
                 std::vector<std::string>* ignored, std::vector<std::string>* missing) {
  load_from(params, st, path, allow_missing, ignored, missing);
}

}  // namespace ada
