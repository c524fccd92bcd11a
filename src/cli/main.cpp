// The `ada` command-line tool: train, eval, retrieve, export and demo. Every subcommand has --help.
// Errors print one line naming file/line/value and exit 1.
#include <cblas.h>
#include <omp.h>
#include <fcntl.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <cstdio>
#include <iomanip>
#include <iostream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ada/batching.hpp"
#include "ada/check.hpp"
#include "ada/checkpoint.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/data.hpp"
#include "ada/device.hpp"
#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/npy.hpp"
#include "ada/retriever.hpp"
#include "ada/train.hpp"
#include "src/cli/serve.hpp"

extern "C" void openblas_set_num_threads(int);

namespace {

using nlohmann::json;
using namespace ada;

// Sign checks on numeric options with messages that say what is wanted (CLI11's PositiveNumber says
// "Value 0 not in range 0.000000 to 1.797...e+308" for 0). A value that is not a number is left to
// the option's own conversion, which names it.
CLI::Validator sign_check(bool zero_allowed) {
  return CLI::Validator(
      [zero_allowed](std::string& text) -> std::string {
        char* end = nullptr;
        const double v = std::strtod(text.c_str(), &end);
        if (end == text.c_str() || *end != 0 || v > 0 || (zero_allowed && v == 0)) return std::string();
        return std::string(zero_allowed ? "must be at least 0" : "must be greater than 0") + ", got " + text;
      },
      zero_allowed ? ">= 0" : "> 0", zero_allowed ? "NONNEGATIVE" : "POSITIVE");
}
const CLI::Validator kPositive = sign_check(false);
const CLI::Validator kNonNegative = sign_check(true);

struct DataArgs {
  std::string path;  // empty: the built-in synthetic data
  std::string format = "auto";
  bool dedup = false;
  int kcore = 0;
  std::string user_col, item_col, time_col;
  uint64_t synthetic_seed = 2024;
  int synthetic_users = 3000, synthetic_items = 1500;
};

void add_data_options(CLI::App* app, DataArgs& a, bool required) {
  auto* o = app->add_option("--data", a.path,
                            "interaction file: FMLP text (`user item item ...`) or CSV/TSV (user, item, "
                            "timestamp)" + std::string(required ? "" : "; default: built-in synthetic data"));
  if (required) o->required();
  app->add_option("--format", a.format, "fmlp | csv | auto (by extension: .csv/.tsv = csv)")
      ->check(CLI::IsMember({"fmlp", "csv", "auto"}));
  app->add_flag("--dedup", a.dedup, "remove repeated items within a user, keeping the first (reference-spec 1.2)");
  app->add_option("--kcore", a.kcore, "csv: iteratively drop users and items with fewer interactions");
  app->add_option("--user-col", a.user_col, "csv: user column (header name or 0-based index)");
  app->add_option("--item-col", a.item_col, "csv: item column");
  app->add_option("--time-col", a.time_col, "csv: timestamp column");
}

bool is_csv(const DataArgs& a) {
  if (a.format != "auto") return a.format == "csv";
  const auto dot = a.path.rfind('.');
  const std::string ext = dot == std::string::npos ? "" : a.path.substr(dot + 1);
  return ext == "csv" || ext == "tsv";
}

Dataset load_data(const DataArgs& a) {
  if (a.path.empty()) {
    SyntheticOptions so;
    so.seed = a.synthetic_seed;
    so.n_users = a.synthetic_users;
    so.n_items = a.synthetic_items;
    return generate_synthetic(so);
  }
  if (is_csv(a)) {
    CsvOptions o;
    o.dedup = a.dedup;
    o.kcore = a.kcore;
    o.user_col = a.user_col;
    o.item_col = a.item_col;
    o.time_col = a.time_col;
    return load_interactions(a.path, o);
  }
  FmlpOptions o;
  o.dedup = a.dedup;
  return load_fmlp(a.path, o);
}

// Maps a dataset's items onto a saved id map (items are looked up by their original id).
void remap_onto(Dataset& ds, const std::vector<std::string>& names, const std::string& map_path) {
  std::map<std::string, ItemId> id_of;
  for (size_t i = 1; i < names.size(); ++i) id_of[names[i]] = ItemId(i);
  for (auto& seq : ds.sequences)
    for (auto& it : seq) {
      const std::string& name = ds.item_names[size_t(it)];
      auto f = id_of.find(name);
      ADA_CHECK(f != id_of.end(), "item \"" << name << "\" is not in the model's item map " << map_path);
      it = f->second;
    }
  ds.item_names = names;
  ds.n_items = int32_t(names.size());
}

void set_threads(int n) {
  if (n <= 0) return;
  omp_set_num_threads(n);
  openblas_set_num_threads(n);
}

// cpu | cuda | auto -> the device that will run: cuda needs a CUDA build and a visible device; auto
// takes the GPU when there is one and says which, or why it settles on the CPU.
std::string resolve_device(const std::string& d) {
  if (d == "cpu") return "cpu";
  std::string why;
  if (!built_with_cuda()) {
    why = "this build has no CUDA support (configure with -DADA_WITH_CUDA=ON)";
  } else if (cuda_device_count() == 0) {
    why = "no CUDA device is visible";
  } else {
    std::cerr << "device: cuda (" << cuda_device_description(0) << ")\n";
    return "cuda";
  }
  ADA_CHECK(d != "cuda", "--device cuda: " << why);
  std::cerr << "device: cpu (" << why << ")\n";
  return "cpu";
}

struct ModelArgs {
  int hidden = 64, layers = 2, heads = 16, inner = 512, max_len = 50;
  float dropout = 0.1777f;
  std::string activation = "silu";
};

void add_model_options(CLI::App* app, ModelArgs& m) {
  app->add_option("--hidden", m.hidden, "embedding size D")->check(kPositive);
  app->add_option("--layers", m.layers, "Transformer layers")->check(kPositive);
  app->add_option("--heads", m.heads, "attention heads (the reference runs 16 heads of 4)")->check(kPositive);
  app->add_option("--inner", m.inner, "feed-forward inner size")->check(kPositive);
  app->add_option("--max-len", m.max_len, "history length L (the last L items are used)")->check(kPositive);
  app->add_option("--dropout", m.dropout, "dropout everywhere")->check(CLI::Range(0.0, 0.99));
  app->add_option("--activation", m.activation, "silu | gelu")->check(CLI::IsMember({"silu", "gelu"}));
}

void add_train_options(CLI::App* app, TrainOptions& t, int& threads, std::string& device) {
  app->add_option("--epochs", t.epochs, "maximum epochs")->check(kNonNegative);
  app->add_option("--patience", t.patience, "early stopping: stop after valid hit@50 failed to improve more than P times");
  app->add_option("--seed", t.seed, "random seed (all randomness is counter-based on it)");
  app->add_option("--batch-size", t.batch_size, "training batch size")->check(kPositive);
  app->add_option("--lr", t.lr, "Adam learning rate")->check(kPositive);
  app->add_option("--n-neg", t.n_neg, "uniform negatives per sample")->check(kPositive);
  app->add_option("--threads", threads, "CPU threads (default: all cores)");
  app->add_option("--device", device, "cpu | cuda | auto")->check(CLI::IsMember({"cpu", "cuda", "auto"}));
}

// --config FILE: a JSON object whose keys are the long option names (dashes or underscores);
// command-line flags override it.
void apply_config_file(CLI::App* app, const std::string& path) {
  if (path.empty()) return;
  json j;
  try {
    j = json::parse(read_file(path));
  } catch (const json::exception& e) {
    ADA_FAIL(path << ": not valid JSON: " << e.what());
  }
  ADA_CHECK(j.is_object(), path << ": must hold a JSON object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    std::string key = it.key();
    std::replace(key.begin(), key.end(), '_', '-');
    CLI::Option* opt = nullptr;
    try {
      opt = app->get_option("--" + key);
    } catch (const CLI::OptionNotFound&) {
      ADA_FAIL(path << ": unknown setting \"" << it.key() << "\"");
    }
    if (opt->count() > 0) continue;  // given on the command line
    const json& v = it.value();
    std::string text = v.is_string() ? v.get<std::string>() : v.dump();
    if (v.is_boolean()) {
      if (v.get<bool>()) opt->add_result(std::string("true"));
      continue;
    }
    opt->add_result(text);
    opt->run_callback();
  }
}

// A model built from a configuration: the backend, the network and its trainer view.
struct Model {
  std::unique_ptr<Backend<float>> be;
  std::unique_ptr<SasRec<float>> base;
  std::unique_ptr<AdaSasRec<float>> ada;
  std::unique_ptr<TrainableModel> trainable;
  ParamStore<float>& params() { return trainable->params(); }
};

Model build_model(const ModelInfo& info, const AdaConfig& base_slices = {}, const std::string& device = "cpu") {
  Model m;
  m.be = device == "cuda" ? make_cuda_backend(0) : make_cpu_backend<float>();
  if (info.ada) {
    m.ada = std::make_unique<AdaSasRec<float>>(info.sasrec, info.ada_cfg, *m.be);
    m.trainable = std::make_unique<AdaTrainable>(*m.ada, info.dataset);
  } else {
    m.base = std::make_unique<SasRec<float>>(info.sasrec, *m.be);
    m.trainable = std::make_unique<SasRecTrainable>(*m.base, info.dataset, base_slices);
  }
  return m;
}

struct AdaArgs {
  bool enabled = false;
  std::string init_from;
  AdaConfig cfg;
  bool no_filter = false, no_attention = false, no_ira = false, no_gru = false, no_mlp = false, no_ura = false;
  AdaConfig resolved() const {
    AdaConfig c = cfg;
    c.filter = !no_filter;
    c.attention = !no_attention;
    c.ira = !no_ira;
    c.gru = !no_gru;
    c.mlp = !no_mlp;
    c.ura = !no_ura;
    return c;
  }
};

void add_ada_options(CLI::App* app, AdaArgs& a) {
  app->add_flag("--ada", a.enabled, "train Ada-Retrieval (adapters + T-round loss) on the SASRec backbone");
  app->add_option("--init-from", a.init_from,
                  "start from these weights (a run folder or a .safetensors): with --ada, phase 2 fine-tuning of "
                  "a pre-trained base; the architecture comes from the file");
  app->add_option("--rounds", a.cfg.rounds, "T: retrieval rounds")->check(kPositive);
  app->add_option("--total-k", a.cfg.total_k, "K: items retrieved over all rounds (K/T per round, rounded up)")
      ->check(kPositive);
  app->add_option("--lambda", a.cfg.lambda, "round t's loss weight is lambda^t")->check(CLI::Range(0.0, 1.0));
  app->add_flag("--no-filter", a.no_filter, "ablation: no learnable filter on the context");
  app->add_flag("--no-attention", a.no_attention, "ablation: mean of the context instead of attention");
  app->add_flag("--no-ira", a.no_ira, "ablation: no item representation adapter");
  app->add_flag("--no-gru", a.no_gru, "ablation: mean of earlier user vectors instead of the GRU");
  app->add_flag("--no-mlp", a.no_mlp, "ablation: LN(v + h) instead of the MLP");
  app->add_flag("--no-ura", a.no_ura, "ablation: no user representation adapter");
}

std::string checkpoint_path(const std::string& p) {
  return file_exists(p + "/model.safetensors") ? p + "/model.safetensors" : p;
}

SasRecConfig make_config(const ModelArgs& m, int32_t n_items) {
  SasRecConfig c;
  c.n_items = n_items;
  c.hidden = m.hidden;
  c.layers = m.layers;
  c.heads = m.heads;
  c.inner = m.inner;
  c.max_len = m.max_len;
  c.dropout = m.dropout;
  c.activation = m.activation == "gelu" ? Activation::kGelu : Activation::kSilu;
  return c;
}

void write_outputs(const std::string& out, const TrainReport& r, const std::string& device) {
  write_file_atomic(out + "/result.json", report_json(r, device));
  std::ostringstream tsv;
  tsv.precision(10);
  for (const auto& [k, v] : r.test) tsv << k << "\t" << v << "\n";
  write_file_atomic(out + "/metrics.tsv", tsv.str());
}

int cmd_train(const DataArgs& da, const ModelArgs& ma, const AdaArgs& aa, TrainOptions to, const std::string& out,
              int threads, const std::string& device_arg) {
  set_threads(threads);
  const std::string device = resolve_device(device_arg);
  const Dataset ds = load_data(da);
  ModelInfo info;
  info.sasrec = make_config(ma, ds.n_items);
  info.dataset = ds.name;
  std::unique_ptr<SafeTensorsFile> init;
  std::string init_path;
  if (!aa.init_from.empty()) {
    init_path = checkpoint_path(aa.init_from);
    init = std::make_unique<SafeTensorsFile>(init_path);
    const ModelInfo from = checkpoint_info(*init, init_path);
    ADA_CHECK(from.sasrec.n_items == ds.n_items, init_path << " has " << from.sasrec.n_items - 1
                                                          << " items, the data " << ds.n_items - 1);
    const float dropout = info.sasrec.dropout;
    info.sasrec = from.sasrec;  // the architecture comes from the file
    info.sasrec.dropout = dropout;
  }
  info.ada = aa.enabled;
  info.ada_cfg = aa.resolved();
  to.out_dir = out;
  make_dirs(out);
  if (!ds.item_names.empty()) save_item_map(out + "/item_map.tsv", ds);
  Model m = build_model(info, {}, device);
  if (m.ada) m.ada->init(to.seed);
  else m.base->init(to.seed);
  if (init) {
    std::vector<std::string> ignored, missing;
    load_params(m.params(), *init, init_path, /*allow_missing=*/true, &ignored, &missing);
    std::cout << "initialised from " << init_path << " (" << m.params().entries().size() - missing.size()
              << " tensors; " << missing.size() << " new, " << ignored.size() << " in the file not used)\n";
  }
  const TrainReport r = train(*m.trainable, ds, to, std::cout);
  write_outputs(out, r, device);
  std::cout << "wrote " << out << "/{model.safetensors,result.json,metrics.tsv,train.log}\n";
  return 0;
}

int cmd_eval(DataArgs da, const std::string& ckpt_arg, const AdaConfig& slices, int threads, int batch,
             bool as_json, const std::string& device_arg) {
  set_threads(threads);
  const std::string device = resolve_device(device_arg);
  const std::string ckpt = checkpoint_path(ckpt_arg);
  const SafeTensorsFile st(ckpt);
  const ModelInfo info = checkpoint_info(st, ckpt);
  Dataset ds = load_data(da);
  if (!ds.item_names.empty()) {
    const auto slash = ckpt.find_last_of('/');
    const std::string map_path = (slash == std::string::npos ? std::string(".") : ckpt.substr(0, slash)) + "/item_map.tsv";
    remap_onto(ds, load_item_map(map_path), map_path);
  }
  ADA_CHECK(ds.n_items <= info.sasrec.n_items,
            da.path << ": item id " << ds.n_items - 1 << " is beyond the model's catalog (ids 1.."
                    << info.sasrec.n_items - 1 << " in " << ckpt << ")");
  ds.n_items = info.sasrec.n_items;
  Model m = build_model(info, slices, device);
  load_params(m.params(), st, ckpt, false);
  const Ragged ex = full_histories(ds);
  const MetricMap v = evaluate(*m.trainable, make_eval_set(ds, false), ex, batch);
  std::vector<int32_t> ranks;
  const MetricMap t = evaluate(*m.trainable, make_eval_set(ds, true), ex, batch, &ranks);
  const std::vector<double> rh = round_hits(ranks, m.trainable->analysis_rounds(), m.trainable->analysis_k());
  if (as_json) {
    json j;
    j["valid"] = v;
    j["test"] = t;
    j["ada"] = info.ada;
    json rounds = json::array();
    for (size_t i = 0; i < rh.size(); ++i) rounds.push_back({{"round", i}, {"hit", rh[i]}});
    j["rounds"] = rounds;
    std::cout << j.dump(2) << "\n";
  } else {
    for (const auto& [k, x] : v) std::printf("valid\t%s\t%.6f\n", k.c_str(), x);
    for (const auto& [k, x] : t) std::printf("test\t%s\t%.6f\n", k.c_str(), x);
    for (size_t i = 0; i < rh.size(); ++i) std::printf("test\tround%zu_hit\t%.6f\n", i, rh[i]);
  }
  return 0;
}

// `ada retrieve --timing`: where the retrieval's time went (AdaRetriever::timing), on stderr.
void print_timing(const RetrieveTiming& t) {
  auto ms = [](double s) {
    std::ostringstream o;
    o << std::fixed << std::setprecision(s < 0.01 ? 3 : 1) << s * 1e3 << " ms";
    return o.str();
  };
  std::cerr << "timing: " << t.users << " users in " << ms(t.total_s) << " ("
            << std::fixed << std::setprecision(0) << (t.total_s > 0 ? double(t.users) / t.total_s : 0.0)
            << " users/s): forward " << ms(t.forward_s) << ", device wait " << ms(t.wait_s) << ", " << t.searches
            << " searches " << ms(t.search_s) << ", bookkeeping " << ms(t.host_s) << ", request " << ms(t.request_s)
            << " (checkpoint loading and input parsing not included)\n";
}

// Input sequences for `ada retrieve`: --seq "3 17 42" or --input FILE with `user item item ...` lines,
// or with --serve such lines as they arrive (src/cli/serve.hpp). Ids are the user's own when the model
// came with an item map. An empty --seq "" is an empty history (a new user).
struct RetrieveArgs {
  std::string ckpt, seq, input, listen;
  bool seq_given = false, serve = false, json = false, timing = false;
  int k = 100, T = 5, threads = 0;
};

// `ada retrieve --serve` (and --listen): parse_line reads a request line (false: blank), to_json and
// to_text format an answer as `--json` and the plain output do. Returns the exit status: for a
// stream, 1 when a request failed (each got its error line), else 0; with --listen, 0 once stopped.
int serve_retrieve(
    const RetrieveArgs& a, int64_t batch, AdaRetriever& r,
    const std::function<bool(const std::string&, const std::string&, std::string&, std::vector<ItemId>&)>& parse_line,
    const std::function<json(const std::string&, const std::vector<Retrieved>&)>& to_json,
    const std::function<std::string(const std::string&, const std::vector<Retrieved>&)>& to_text) {
  (void)AdaRetriever::round_sizes(a.k, a.T);  // k and T themselves, before any request
  const bool listening = !a.listen.empty();
  ADA_CHECK(!listening || a.input.empty(), "retrieve: --listen serves its socket's connections, not --input");
  const bool from_stdin = a.input.empty() || a.input == "-";
  const std::string where = listening ? a.listen : from_stdin ? "stdin" : a.input;
  int fd = 0;
  if (!from_stdin && !listening) {
    fd = ::open(a.input.c_str(), O_RDONLY | O_CLOEXEC);
    ADA_CHECK(fd >= 0, a.input << ": cannot open: " << std::strerror(errno));
  }
  struct Close {
    int fd;
    ~Close() {
      if (fd > 0) ::close(fd);
    }
  } close_fd{fd};
  cli::ServeHooks h;
  h.parse = [&](const std::string& line, int64_t line_no, std::string& user, std::vector<ItemId>& seq) {
    const std::string at = where + ":" + std::to_string(line_no);
    parse_line(line, at, user, seq);
    // k against this history's candidates here, so that one such request does not fail its batch
    const int64_t candidates = r.candidates(seq);
    ADA_CHECK(a.k <= candidates, at << ": k = " << a.k << " but the history leaves only " << candidates
                                    << " candidate items");
  };
  h.answer = [&](const std::vector<std::vector<ItemId>>& seqs) { return r.retrieve_batch(seqs, a.k, a.T); };
  h.format = [&](const std::string& user, const std::vector<Retrieved>& items) {
    return a.json ? to_json(user, items).dump() : to_text(user, items);
  };
  h.format_error = [&](const std::string& user, int64_t line_no, const std::string& error) {
    return a.json ? json{{"user", user}, {"line", line_no}, {"error", error}}.dump() : user + ": error: " + error;
  };
  if (listening) {  // the connections' threads share the model through one batching worker
    BatchingRetriever server(r, a.k, a.T, int(std::min<int64_t>(batch, INT32_MAX)));
    h.answer = [&](const std::vector<std::vector<ItemId>>& seqs) {
      std::vector<std::future<std::vector<Retrieved>>> answers;
      for (const std::vector<ItemId>& s : seqs) answers.push_back(server.submit(s));
      std::vector<std::vector<Retrieved>> out;
      for (auto& f : answers) out.push_back(f.get());
      return out;
    };
    const cli::ListenStats ls = cli::serve_socket(a.listen, batch, h);
    const BatchingRetriever::Stats bs = server.stats();
    std::cerr << "ada: stopped: " << ls.requests << " requests (" << ls.failed << " refused) from " << ls.connections
              << " connections, " << bs.requests << " answered in " << bs.batches << " batches (largest "
              << bs.largest << ")\n";
    if (a.timing) print_timing(r.timing());
    return 0;
  }
  cli::LineReader in(fd);
  cli::ServeStats st;
  cli::serve_lines(
      in,
      [](const std::string& text) {
        ADA_CHECK(std::fwrite(text.data(), 1, text.size(), stdout) == text.size() && std::fflush(stdout) == 0,
                  "serve: writing the answers failed: " << std::strerror(errno));
      },
      batch, h, st);
  if (a.timing) print_timing(r.timing());
  if (st.failed == 0) return 0;
  std::ostringstream lines;
  for (size_t i = 0; i < st.failed_lines.size(); ++i) lines << (i ? ", " : "") << st.failed_lines[i];
  std::cerr << "ada: error: " << st.failed << " of " << st.requests << " requests failed (" << where << " lines "
            << lines.str() << (st.failed > int64_t(st.failed_lines.size()) ? ", ..." : "") << ")\n";
  return 1;
}

int cmd_retrieve(RetrieveArgs a, const RetrieverOptions& opt) {
  set_threads(a.threads);
  a.serve = a.serve || !a.listen.empty();  // --listen is a way of serving
  if (a.serve)
    ADA_CHECK(!a.seq_given, "retrieve: --serve reads histories from --input (default: standard input), not --seq");
  else
    ADA_CHECK(a.seq_given != !a.input.empty(), "retrieve: give exactly one of --seq and --input (or --serve)");
  AdaRetriever r = AdaRetriever::load(a.ckpt, opt);
  const std::vector<std::string>& names = r.item_names();
  std::map<std::string, ItemId> id_of;
  for (size_t i = 1; i < names.size(); ++i) id_of[names[i]] = ItemId(i);
  // (a token is quoted in errors with its control bytes escaped: what() ends at a NUL)
  auto quoted = [](const std::string& tok) {
    std::string q = "\"";
    for (const unsigned char ch : tok) {
      if (ch >= 0x20 && ch != 0x7f) {
        q += char(ch);
      } else {
        char hex[8];
        std::snprintf(hex, sizeof hex, "\\x%02x", ch);
        q += hex;
      }
    }
    return q + "\"";
  };
  auto parse_item = [&](const std::string& tok, const std::string& where) -> ItemId {
    if (!names.empty()) {
      auto f = id_of.find(tok);
      ADA_CHECK(f != id_of.end(), where << ": item " << quoted(tok) << " is not in the model's item map");
      return f->second;
    }
    char* end = nullptr;
    errno = 0;
    const long v = std::strtol(tok.c_str(), &end, 10);
    ADA_CHECK(end == tok.c_str() + tok.size() && errno == 0 && v >= 1 && v < r.num_items(),
              where << ": item id " << quoted(tok) << " is not an item of the model (1.." << r.num_items() - 1 << ")");
    return ItemId(v);
  };
  // A `user item item ...` line; false for a blank one.
  auto parse_line = [&](const std::string& line, const std::string& where, std::string& user,
                        std::vector<ItemId>& seq) {
    std::istringstream ls(line);
    seq.clear();
    if (!(ls >> user)) return false;
    for (std::string tok; ls >> tok;) seq.push_back(parse_item(tok, where));
    return true;
  };
  auto name = [&](ItemId id) { return names.empty() ? std::to_string(id) : names[size_t(id)]; };
  auto to_json = [&](const std::string& user, const std::vector<Retrieved>& list) {
    json items = json::array();
    for (const Retrieved& x : list) {
      const json item = names.empty() ? json(x.item) : json(name(x.item));
      items.push_back({{"item", item}, {"score", x.score}, {"round", x.round}});
    }
    json o = {{"items", items}};
    if (!user.empty()) o["user"] = user;
    return o;
  };
  auto to_text = [&](const std::string& user, const std::vector<Retrieved>& list) {
    std::string line = user.empty() ? "" : user + ":";
    for (const Retrieved& x : list) line += " " + name(x.item);
    return line;
  };
  r.set_timing(a.timing);
  if (a.serve) return serve_retrieve(a, opt.batch, r, parse_line, to_json, to_text);
  std::vector<std::string> users;
  std::vector<std::vector<ItemId>> seqs;
  if (a.seq_given) {
    std::istringstream is(a.seq);
    std::vector<ItemId> seq;
    for (std::string tok; is >> tok;) seq.push_back(parse_item(tok, "--seq"));
    users.push_back("");
    seqs.push_back(seq);
  } else {
    std::istringstream is(read_file(a.input));
    std::string line, user;
    std::vector<ItemId> seq;
    for (int ln = 1; std::getline(is, line); ++ln)
      if (parse_line(line, a.input + ":" + std::to_string(ln), user, seq)) {
        users.push_back(user);
        seqs.push_back(seq);
      }
    ADA_CHECK(!seqs.empty(), a.input << ": no sequences");
  }
  const auto results = r.retrieve_batch(seqs, a.k, a.T);
  if (a.timing) print_timing(r.timing());
  if (a.json) {
    json all = json::array();
    for (size_t i = 0; i < results.size(); ++i) all.push_back(to_json(users[i], results[i]));
    std::cout << (a.seq_given ? all[0] : all).dump(2) << "\n";
  } else {
    for (size_t i = 0; i < results.size(); ++i) std::cout << to_text(users[i], results[i]) << "\n";
  }
  return 0;
}

// `ada export`: the model's item table (and item bias) as .npy files for an external ANN index, and
// optionally the user vectors of a data file's users. Score of item i for user vector u, as
// retrieve() ranks: <u, items[i]> + bias[i] (row i = model item id i; row 0 is padding, never
// retrieved). When the model came with an item map, ITEMS.tsv beside ITEMS.npy (the --out path with
// ".npy" replaced by ".tsv") maps each row 1..N-1 to the user's own item id (`row<TAB>id`, as
// item_map.tsv). User vectors: the history is the user's whole sequence in the data file (the
// "next item after everything we know" query); [U, D] for a base model or T = 1, else [U, T, D]
// (Ada round t = retrieve()'s round t). Every output is written, or none.
struct ExportArgs {
  std::string ckpt, out, bias_out, users_out, user_ids_out;
  int T = 0;
  bool T_given = false;
  int threads = 0;
};

// An output of `ada export`: `head`, then `bytes` bytes at `data` (written from where they are: the
// model's item table is not copied).
struct OutFile {
  std::string path;
  std::string head;  // an .npy header, or a whole text file
  const void* data = nullptr;
  size_t bytes = 0;
};
OutFile npy_file(const std::string& path, const float* values, const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return {path, npy_header("<f4", shape), values, size_t(n) * sizeof(float)};
}

// Writes all the files or none of them: each goes beside its target first (complete, via
// write_file_atomic), and only when all are there are they renamed into place.
void write_all_or_nothing(const std::vector<OutFile>& files) {
  for (size_t i = 0; i < files.size(); ++i)
    for (size_t j = 0; j < i; ++j)
      ADA_CHECK(files[i].path != files[j].path, "export: " << files[i].path << " is named for two outputs");
  for (const auto& f : files) {
    const auto slash = f.path.find_last_of('/');
    const std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : f.path.substr(0, slash);
    ADA_CHECK(::access(dir.c_str(), W_OK) == 0,
              f.path << ": cannot write there (folder " << dir << ": " << std::strerror(errno) << ")");
  }
  std::vector<std::string> staged;
  try {
    for (const OutFile& f : files) {
      write_file_atomic(f.path + ".export.tmp", {{f.head.data(), f.head.size()}, {f.data, f.bytes}});
      staged.push_back(f.path + ".export.tmp");
    }
    for (size_t i = 0; i < files.size(); ++i)
      ADA_CHECK(std::rename(staged[i].c_str(), files[i].path.c_str()) == 0,
                files[i].path << ": cannot write (" << std::strerror(errno) << ")");
  } catch (...) {
    for (const std::string& tmp : staged) std::remove(tmp.c_str());
    throw;
  }
}

int cmd_export(const ExportArgs& a, const DataArgs& da) {
  set_threads(a.threads);
  const std::string ckpt = checkpoint_path(a.ckpt);
  AdaRetriever r = AdaRetriever::load(ckpt);
  const int64_t N = r.num_items(), D = r.embedding_dim();
  std::vector<OutFile> files;
  std::vector<float> U;  // user vectors (kept until the files are written)
  std::ostringstream said;
  files.push_back(npy_file(a.out, r.item_embeddings(), {N, D}));
  said << "wrote " << a.out << ": item embeddings float32 [" << N << ", " << D << "] (row = item id, row 0 = padding)\n";
  const std::vector<std::string>& names = r.item_names();
  if (!names.empty()) {
    const bool npy_ext = a.out.size() > 4 && a.out.compare(a.out.size() - 4, 4, ".npy") == 0;
    const std::string tsv_path = (npy_ext ? a.out.substr(0, a.out.size() - 4) : a.out) + ".tsv";
    std::string tsv;
    for (size_t i = 1; i < names.size(); ++i) tsv += std::to_string(i) + "\t" + names[i] + "\n";
    files.push_back({tsv_path, tsv});
    said << "wrote " << tsv_path << ": row -> your item id (" << names.size() - 1 << " items)\n";
  }
  if (!a.bias_out.empty()) {
    ADA_CHECK(r.item_bias() != nullptr,
              "export: --bias-out: " << ckpt << " has no item bias (its scores are <u, e_i> alone)");
    files.push_back(npy_file(a.bias_out, r.item_bias(), {N}));
    said << "wrote " << a.bias_out << ": item bias float32 [" << N << "]\n";
  } else if (r.item_bias() != nullptr) {
    said << "note: the model has an item bias (score = <u, e_i> + b_i); --bias-out writes it\n";
  }
  if (!da.path.empty()) {
    const int T = a.T_given ? a.T : r.rounds();
    ADA_CHECK(T >= 1, "export: -T must be >= 1, got " << T);
    ADA_CHECK(r.is_ada() || T == 1, "export: -T " << T << ": " << ckpt
                                                  << " is a base model, with one user vector per user (-T 1)");
    Dataset ds = load_data(da);
    if (!ds.item_names.empty()) {
      const auto slash = ckpt.find_last_of('/');
      const std::string map_path =
          (slash == std::string::npos ? std::string(".") : ckpt.substr(0, slash)) + "/item_map.tsv";
      ADA_CHECK(!names.empty(), da.path << ": the log names items by its own ids, but the model has no item map ("
                                        << map_path << " is missing)");
      remap_onto(ds, names, map_path);
    }
    for (size_t u = 0; u < ds.sequences.size(); ++u)
      for (ItemId it : ds.sequences[u])
        ADA_CHECK(it >= 1 && it < N, da.path << ": user " << ds.user_names[u] << ": item id " << it
                                             << " is not in the model's catalog (ids 1.." << N - 1 << " in "
                                             << ckpt << ")");
    ADA_CHECK(!ds.sequences.empty(), da.path << ": no users");
    if (ds.dropped_users > 0)
      std::cerr << "note: " << da.path << ": " << ds.dropped_users
                << " users with fewer than 3 items were left out by the loader\n";
    U = r.user_vectors(ds.sequences, T);
    const int64_t B = int64_t(ds.sequences.size());
    const std::vector<int64_t> shape = T == 1 ? std::vector<int64_t>{B, D} : std::vector<int64_t>{B, T, D};
    files.push_back(npy_file(a.users_out, U.data(), shape));
    said << "wrote " << a.users_out << ": user vectors float32 [" << B << (T == 1 ? "" : ", " + std::to_string(T))
         << ", " << D << "]\n";
    if (!a.user_ids_out.empty()) {
      std::string ids;
      for (const std::string& u : ds.user_names) ids += u + "\n";
      files.push_back({a.user_ids_out, ids});
      said << "wrote " << a.user_ids_out << ": one user id per row of " << a.users_out << "\n";
    }
  }
  write_all_or_nothing(files);
  std::cout << said.str();
  return 0;
}

int cmd_demo(int threads, int epochs, const std::string& out) {
  set_threads(threads);
  std::cout << "ada demo: SASRec on built-in synthetic data (users with several interests)\n";
  DataArgs da;
  const Dataset ds = load_data(da);
  std::cout << "data: " << ds.sequences.size() << " users, " << ds.n_items - 1 << " items, "
            << ds.num_actions() << " interactions\n";
  auto be = make_cpu_backend<float>();
  ModelArgs ma;
  SasRec<float> model(make_config(ma, ds.n_items), *be);
  SasRecTrainable trainable(model, ds.name);
  TrainOptions to;
  to.epochs = epochs;
  to.patience = 3;
  // The synthetic set is small (about 34k samples): batches of 128 give enough optimizer steps per
  // epoch for the model to get past the popularity stage within a couple of minutes.
  to.batch_size = 128;
  to.out_dir = out;
  if (!out.empty()) make_dirs(out);
  model.init(to.seed);
  const TrainReport r = train(trainable, ds, to, std::cout);
  if (!out.empty()) write_outputs(out, r, "cpu");

  const Ragged ex = full_histories(ds);
  const EvalSet test = make_eval_set(ds, true);
  const MetricMap pop = evaluate_popularity(ds, test, ex);
  std::printf("\ntest  %-12s hit@50 %.4f  ndcg@50 %.4f  hit@100 %.4f\n", "SASRec", r.test.at("hit@50"),
              r.test.at("ndcg@50"), r.test.at("hit@100"));
  std::printf("test  %-12s hit@50 %.4f  ndcg@50 %.4f  hit@100 %.4f\n\n", "most-popular", pop.at("hit@50"),
              pop.at("ndcg@50"), pop.at("hit@100"));
  // A few retrievals: top 10 over the whole catalog minus the history.
  const int shown = 3, k = 10;
  Ragged hist;
  Ragged excl;
  for (int i = 0; i < shown; ++i) {
    hist.push_row(test.histories.row_begin(size_t(i)), test.histories.row_end(size_t(i)));
    excl.push_row(test.histories.row_begin(size_t(i)), test.histories.row_end(size_t(i)));
  }
  const std::vector<float> U = user_vectors(model, hist, shown);
  std::vector<ItemId> ids(size_t(shown * k));
  std::vector<float> scores(size_t(shown * k));
  topk_excluding(U.data(), shown, model.item_table(), model.item_bias(), ds.n_items, model.config().hidden,
                 k, excl, nullptr, ids.data(), scores.data());
  for (int i = 0; i < shown; ++i) {
    std::printf("user %s  history (last 8):", ds.user_names[size_t(test.users[size_t(i)])].c_str());
    const int64_t n = hist.row_size(size_t(i));
    for (int64_t j = std::max<int64_t>(0, n - 8); j < n; ++j) std::printf(" %d", hist.row_begin(size_t(i))[j]);
    std::printf("\n  next item %d   top-%d:", test.targets[size_t(i)], k);
    for (int j = 0; j < k; ++j) {
      const ItemId id = ids[size_t(i * k + j)];
      std::printf(id == test.targets[size_t(i)] ? " [%d]" : " %d", id);
    }
    std::printf("\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"ada: Ada-Retrieval (adaptive multi-round retrieval) for sequential recommenders"};
  app.require_subcommand(1);
  app.set_version_flag("--version", "ada 0.1.0");

  DataArgs train_data;
  ModelArgs train_model;
  TrainOptions train_opt;
  std::string train_out = "ada-out", train_model_name = "sasrec", train_device = "auto", train_config;
  int train_threads = 0;
  auto* t = app.add_subcommand("train", "train a model (validates every epoch, early-stops, tests the best)");
  add_data_options(t, train_data, false);
  t->add_option("--model", train_model_name, "backbone")->check(CLI::IsMember({"sasrec"}));
  t->add_option("--out", train_out, "output folder (model.safetensors, result.json, metrics.tsv, train.log)");
  t->add_option("--config", train_config, "JSON file of settings (keys = long option names); flags override it");
  t->add_flag("--resume", train_opt.resume, "continue an interrupted run from OUT/last_state.safetensors");
  t->add_option("--max-batches", train_opt.max_batches_per_epoch, "train on at most N batches per epoch (0 = all)");
  add_model_options(t, train_model);
  add_train_options(t, train_opt, train_threads, train_device);
  AdaArgs train_ada;
  add_ada_options(t, train_ada);

  DataArgs eval_data;
  std::string eval_ckpt;
  int eval_threads = 0, eval_batch = 1024;
  bool eval_json = false;
  auto* e = app.add_subcommand("eval", "full-ranking HR/NDCG@50,100 of a checkpoint on valid and test");
  e->add_option("--checkpoint", eval_ckpt, "model.safetensors or its run folder (ours, or a reference state dict)")
      ->required();
  add_data_options(e, eval_data, true);
  e->add_option("--threads", eval_threads, "CPU threads");
  e->add_option("--batch", eval_batch, "users per batch")->check(kPositive);
  e->add_flag("--json", eval_json, "print JSON");
  std::string eval_device = "auto";
  e->add_option("--device", eval_device, "cpu | cuda | auto: where the forwards and the ranking run")
      ->check(CLI::IsMember({"cpu", "cuda", "auto"}));
  AdaConfig eval_slices;
  e->add_option("--rounds", eval_slices.rounds, "per-round analysis of a base model: T slices of its ranking")
      ->check(kPositive);
  e->add_option("--total-k", eval_slices.total_k, "per-round analysis of a base model: K items in all")
      ->check(kPositive);

  RetrieveArgs ret;
  auto* rt = app.add_subcommand("retrieve", "the next k items for histories, over T rounds (round order)");
  rt->add_option("--checkpoint", ret.ckpt, "model.safetensors or its run folder (base or Ada)")->required();
  auto* ret_seq_opt =
      rt->add_option("--seq", ret.seq, "one history: item ids separated by spaces, oldest first (\"\": a new user)");
  rt->add_option("--input", ret.input, "a file of histories, `user item item ...` per line (with --serve: - or "
                                       "absent is standard input)");
  rt->add_flag("--serve", ret.serve,
               "stay up: answer each line of --input as it arrives, one output line per request (JSON Lines "
               "with --json), flushed per batch; a bad request gets an error line and the rest go on; exit 1 "
               "at the end if any request failed");
  rt->add_option("--listen", ret.listen,
                 "serve a Unix-domain socket at this path instead of standard input (implies --serve): each "
                 "connection sends request lines and reads answer lines, and the requests of all connections are "
                 "batched together; SIGINT or SIGTERM stops it");
  rt->add_option("-k", ret.k, "items to return")->check(kPositive);
  rt->add_option("-T", ret.T, "rounds (k is split over them: the first k % T rounds get one more)")
      ->check(kPositive);
  rt->add_flag("--json", ret.json, "JSON with each item's score and round");
  rt->add_flag("--timing", ret.timing,
               "print where the retrieval's time went to stderr: forward, device wait, searches, bookkeeping");
  rt->add_option("--threads", ret.threads, "CPU threads");
  RetrieverOptions ret_opt;
  rt->add_option("--device", ret_opt.device,
                 "cpu, or cuda: the model and every catalog search (the fused top-k kernel) on the GPU")
      ->check(CLI::IsMember({"cpu", "cuda"}));
  rt->add_option("--shards", ret_opt.shards,
                 "split the catalog into N shards searched separately and merged exactly (0: one sgemm pass; "
                 "on the CPU, 1 searches a 1M-item catalog about 2x faster, 4x or more for a single history, "
                 "after about 0.15 s more start-up)")
      ->check(kNonNegative);
  rt->add_option("--gpu", ret_opt.gpu, "CUDA device index")->check(kNonNegative);
  rt->add_option("--batch", ret_opt.batch, "users per pass (memory grows with it; scores change only in the last bits)")
      ->check(kPositive);

  int demo_threads = 0, demo_epochs = 8;
  std::string demo_out;
  auto* d = app.add_subcommand("demo", "train and evaluate briefly on synthetic data, show retrievals");
  d->add_option("--threads", demo_threads, "CPU threads");
  d->add_option("--epochs", demo_epochs, "maximum epochs")->check(kPositive);
  d->add_option("--out", demo_out, "also write the outputs to this folder");

  ExportArgs exp;
  DataArgs exp_data;
  auto* ex = app.add_subcommand("export", "item embeddings (and bias, user vectors) as NumPy .npy for ANN indexes");
  ex->add_option("--checkpoint", exp.ckpt, "model.safetensors or its run folder (base or Ada)")->required();
  ex->add_option("--out", exp.out,
                 "items .npy: float32 [N, D], row = item id (row 0 = padding); with an item map also "
                 "OUT-without-.npy + .tsv: `row<TAB>your item id`")
      ->required();
  ex->add_option("--bias-out", exp.bias_out, "item bias .npy: float32 [N] (score = <u, e_i> + b_i)");
  add_data_options(ex, exp_data, false);
  ex->get_option("--data")->description(
      "users to export vectors for (history = each user's whole sequence): FMLP text or CSV/TSV log");
  auto* exp_users = ex->add_option("--users-out", exp.users_out,
                                   "user vectors .npy: float32 [U, D] (base model or T = 1) or [U, T, D]");
  auto* exp_ids = ex->add_option("--user-ids-out", exp.user_ids_out, "user ids, one per row of --users-out");
  auto* exp_T = ex->add_option("-T", exp.T, "Ada: rounds of user vectors (default: the model's rounds)");
  ex->add_option("--threads", exp.threads, "CPU threads");
  ex->get_option("--data")->needs(exp_users);
  exp_users->needs(ex->get_option("--data"));
  exp_ids->needs(exp_users);
  exp_T->needs(exp_users);

  try {
    app.parse(argc, argv);
    exp.T_given = exp_T->count() > 0;
    if (t->parsed()) apply_config_file(t, train_config);
  } catch (const CLI::ParseError& pe) {
    return app.exit(pe);
  } catch (const std::exception& ex) {
    std::cerr << "ada: error: " << ex.what() << "\n";
    return 1;
  }
  try {
    if (t->parsed())
      return cmd_train(train_data, train_model, train_ada, train_opt, train_out, train_threads, train_device);
    if (e->parsed()) return cmd_eval(eval_data, eval_ckpt, eval_slices, eval_threads, eval_batch, eval_json,
                                     eval_device);
    if (d->parsed()) return cmd_demo(demo_threads, demo_epochs, demo_out);
    if (ex->parsed()) return cmd_export(exp, exp_data);
    if (rt->parsed()) {
      ret.seq_given = ret_seq_opt->count() > 0;
      return cmd_retrieve(ret, ret_opt);
    }
  } catch (const std::exception& ex) {
    std::cerr << "ada: error: " << ex.what() << "\n";
    return 1;
  }
  return 0;
}
