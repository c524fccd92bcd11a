// `ada export`: the exported .npy arrays are the model's item table, item bias and the user vectors
// AdaRetriever ranks with, so an external index over them finds what retrieve() finds; errors are
// clear, exit non-zero and leave no partial outputs.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "ada/checkpoint.hpp"
#include "ada/fileio.hpp"
#include "tests/cli_run.hpp"
#include "ada/npy.hpp"
#include "ada/retriever.hpp"
#include "ada/safetensors.hpp"

namespace fs = std::filesystem;
using namespace ada;

namespace {

using ada_test::Run;
using ada_test::run_ada;

struct TempDir {
  std::string path;
  explicit TempDir(const std::string& name) {
    path = (fs::temp_directory_path() / ("ada_export_" + name + "_" + std::to_string(::getpid()))).string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

// A tiny model and one short epoch on one thread keep `ada train` to about a second.
const char* kTiny = " --epochs 1 --max-batches 2 --hidden 16 --heads 2 --inner 32 --max-len 20 --threads 1 ";

// 120 users over 150 items, FMLP text; returns the sequences by user id.
std::map<std::string, std::vector<ItemId>> write_toy(const std::string& path) {
  std::map<std::string, std::vector<ItemId>> seqs;
  std::string text;
  for (int u = 1; u <= 120; ++u) {
    text += std::to_string(u);
    auto& s = seqs[std::to_string(u)];
    for (int i = 0; i < 4 + u % 5; ++i) {
      s.push_back(ItemId(1 + (u * 7 + i * 3) % 150));
      text += " " + std::to_string(s.back());
    }
    text += "\n";
  }
  write_file_atomic(path, text);
  return seqs;
}

std::vector<std::string> lines_of(const std::string& path) {
  std::istringstream is(read_file(path));
  std::vector<std::string> out;
  for (std::string l; std::getline(is, l);) out.push_back(l);
  return out;
}

// Exact in practice; a tolerance only so a different BLAS thread split cannot fail the test.
void require_close(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i) REQUIRE(a[i] == Approx(b[i]).margin(1e-5));
}

double score(const NpyArray& E, const NpyArray* bias, const float* u, ItemId i) {
  const int64_t D = E.shape[1];
  double s = bias ? double(bias->f32[size_t(i)]) : 0.0;
  for (int64_t d = 0; d < D; ++d) s += double(E.f32[size_t(i * D + d)]) * double(u[d]);
  return s;
}

// What an external index over the exported arrays does for one round: the top `k` of
// <u, E_i> + b_i over items 1..N-1 minus `excluded`. retrieve()'s round must be that top (ties
// within float rounding may order differently, so compare scores, not positions).
void check_round_is_top(const NpyArray& E, const NpyArray* bias, const float* u, const std::set<ItemId>& excluded,
                        const std::vector<Retrieved>& got) {
  const ItemId N = ItemId(E.shape[0]);
  std::vector<double> cand;
  for (ItemId i = 1; i < N; ++i)
    if (!excluded.count(i)) cand.push_back(score(E, bias, u, i));
  std::sort(cand.rbegin(), cand.rend());
  REQUIRE(got.size() <= cand.size());
  for (size_t j = 0; j < got.size(); ++j) {
    REQUIRE(got[j].item >= 1);
    REQUIRE(!excluded.count(got[j].item));
    REQUIRE(double(got[j].score) == Approx(score(E, bias, u, got[j].item)).margin(1e-4));
    REQUIRE(double(got[j].score) == Approx(cand[j]).margin(1e-4));  // the j-th best score
  }
}

}  // namespace

TEST_CASE("ada export of a base model: item table, bias, user vectors and user ids", "[cli]") {
  TempDir dir("base");
  const auto seqs = write_toy(dir.path + "/toy.txt");
  Run r = run_ada("train --data " + dir.path + "/toy.txt --out " + dir.path + "/run" + kTiny);
  INFO(r.out);
  REQUIRE(r.code == 0);
  r = run_ada("export --checkpoint " + dir.path + "/run --out " + dir.path + "/items.npy --bias-out " + dir.path +
              "/bias.npy --data " + dir.path + "/toy.txt --users-out " + dir.path + "/users.npy --user-ids-out " +
              dir.path + "/users.tsv --threads 1");
  INFO(r.out);
  REQUIRE(r.code == 0);
  REQUIRE(!file_exists(dir.path + "/items.tsv"));  // no item map: row = the data's own item id

  const std::string ckpt = dir.path + "/run/model.safetensors";
  AdaRetriever ret = AdaRetriever::load(ckpt);
  REQUIRE(!ret.is_ada());
  REQUIRE(ret.rounds() == 1);
  const int64_t N = ret.num_items(), D = ret.embedding_dim();
  REQUIRE(N == 151);
  REQUIRE(D == 16);

  const NpyArray E = read_npy_f32(dir.path + "/items.npy");
  REQUIRE(E.shape == std::vector<int64_t>{N, D});
  const SafeTensors st = read_safetensors(ckpt);
  REQUIRE(E.f32 == st.at("item_embedding.weight").to_f32());
  REQUIRE(std::equal(E.f32.begin(), E.f32.end(), ret.item_embeddings()));
  const NpyArray b = read_npy_f32(dir.path + "/bias.npy");
  REQUIRE(b.shape == std::vector<int64_t>{N});
  REQUIRE(b.f32 == st.at("item_bias").to_f32());
  REQUIRE(ret.item_bias() != nullptr);
  REQUIRE(std::equal(b.f32.begin(), b.f32.end(), ret.item_bias()));

  const std::vector<std::string> users = lines_of(dir.path + "/users.tsv");
  REQUIRE(users.size() == seqs.size());
  std::vector<std::vector<ItemId>> hist;
  for (const std::string& u : users) hist.push_back(seqs.at(u));
  const NpyArray U = read_npy_f32(dir.path + "/users.npy");
  REQUIRE(U.shape == std::vector<int64_t>{int64_t(users.size()), D});  // a base model: [U, D]
  require_close(U.f32, ret.user_vectors(hist, 1));
  // T > 1 for a base model: the same vector each round, as retrieve() uses it
  const std::vector<float> u1 = ret.user_vectors({hist[0], hist[1]}, 1);
  const std::vector<float> u3 = ret.user_vectors({hist[0], hist[1]}, 3);
  REQUIRE(u3.size() == size_t(2 * 3 * D));
  for (int t = 0; t < 3; ++t)
    for (int b2 = 0; b2 < 2; ++b2)
      REQUIRE(std::equal(u1.begin() + b2 * D, u1.begin() + (b2 + 1) * D, u3.begin() + (b2 * 3 + t) * D));

  // An index over the exported arrays finds retrieve()'s first round.
  for (size_t i = 0; i < users.size(); i += 7) {
    const auto got = ret.retrieve_scored(hist[i], 10, 2);
    std::vector<Retrieved> round0(got.begin(), got.begin() + 5);
    check_round_is_top(E, &b, U.f32.data() + i * size_t(D), std::set<ItemId>(hist[i].begin(), hist[i].end()), round0);
  }
}

TEST_CASE("ada export of an Ada model: [U, T, D] user vectors, each round usable with the exported items", "[cli]") {
  TempDir dir("ada");
  const auto seqs = write_toy(dir.path + "/toy.txt");
  Run r = run_ada("train --data " + dir.path + "/toy.txt --out " + dir.path + "/base" + kTiny);
  INFO(r.out);
  REQUIRE(r.code == 0);
  r = run_ada("train --data " + dir.path + "/toy.txt --ada --init-from " + dir.path + "/base --rounds 3 --total-k 60 " +
              "--epochs 1 --max-batches 1 --threads 1 --out " + dir.path + "/ada");
  INFO(r.out);
  REQUIRE(r.code == 0);
  const std::string common = "export --checkpoint " + dir.path + "/ada/model.safetensors --out " + dir.path +
                             "/items.npy --bias-out " + dir.path + "/bias.npy --data " + dir.path +
                             "/toy.txt --user-ids-out " + dir.path + "/users.tsv --threads 1 --users-out " + dir.path;
  r = run_ada(common + "/users.npy");
  INFO(r.out);
  REQUIRE(r.code == 0);
  r = run_ada(common + "/users2.npy -T 2");
  REQUIRE(r.code == 0);
  r = run_ada(common + "/users1.npy -T 1");
  REQUIRE(r.code == 0);

  AdaRetriever ret = AdaRetriever::load(dir.path + "/ada");
  REQUIRE(ret.is_ada());
  REQUIRE(ret.rounds() == 3);
  const int64_t N = ret.num_items(), D = ret.embedding_dim(), T = 3;
  const NpyArray E = read_npy_f32(dir.path + "/items.npy");
  const NpyArray b = read_npy_f32(dir.path + "/bias.npy");
  REQUIRE(E.shape == std::vector<int64_t>{N, D});
  REQUIRE(std::equal(E.f32.begin(), E.f32.end(), ret.item_embeddings()));
  REQUIRE(std::equal(b.f32.begin(), b.f32.end(), ret.item_bias()));

  const std::vector<std::string> users = lines_of(dir.path + "/users.tsv");
  const int64_t B = int64_t(users.size());
  std::vector<std::vector<ItemId>> hist;
  for (const std::string& u : users) hist.push_back(seqs.at(u));
  const NpyArray U = read_npy_f32(dir.path + "/users.npy");
  REQUIRE(U.shape == std::vector<int64_t>{B, T, D});  // default T = the model's rounds
  require_close(U.f32, ret.user_vectors(hist, int(T)));
  // round t does not depend on later rounds: -T 2 is the first two rounds, -T 1 round 0 ([U, D])
  const NpyArray U2 = read_npy_f32(dir.path + "/users2.npy");
  const NpyArray U1 = read_npy_f32(dir.path + "/users1.npy");
  REQUIRE(U2.shape == std::vector<int64_t>{B, 2, D});
  REQUIRE(U1.shape == std::vector<int64_t>{B, D});
  for (int64_t u = 0; u < B; ++u)
    for (int64_t t = 0; t < 2; ++t)
      for (int64_t d = 0; d < D; ++d) {
        const float x = U.f32[size_t((u * T + t) * D + d)];
        REQUIRE(U2.f32[size_t((u * 2 + t) * D + d)] == Approx(x).margin(1e-6));
        if (t == 0) REQUIRE(U1.f32[size_t(u * D + d)] == Approx(x).margin(1e-6));
      }

  // Each of retrieve()'s rounds is the top of E·u_t + b over what earlier rounds and the history left.
  for (size_t i = 0; i < users.size(); i += 11) {
    const auto got = ret.retrieve_scored(hist[i], 15, int(T));
    std::set<ItemId> excluded(hist[i].begin(), hist[i].end());
    for (int t = 0; t < T; ++t) {
      const std::vector<Retrieved> round(got.begin() + 5 * t, got.begin() + 5 * (t + 1));
      for (const Retrieved& x : round) REQUIRE(x.round == t);
      check_round_is_top(E, &b, U.f32.data() + (i * size_t(T) + size_t(t)) * size_t(D), excluded, round);
      for (const Retrieved& x : round) excluded.insert(x.item);
    }
  }
}

TEST_CASE("ada export with a CSV log: items.tsv maps rows to the log's item ids, users are remapped", "[cli]") {
  TempDir dir("csv");
  std::string csv = "user,item,timestamp\n";
  std::map<std::string, std::vector<std::string>> by_user;
  for (int u = 0; u < 80; ++u)
    for (int i = 0; i < 5 + u % 3; ++i) {
      const std::string user = "u" + std::to_string(u), item = "sku" + std::to_string(100 + (u * 5 + i * 7) % 90);
      csv += user + "," + item + "," + std::to_string(1000 + i) + "\n";
      by_user[user].push_back(item);
    }
  write_file_atomic(dir.path + "/log.csv", csv);
  Run r = run_ada("train --data " + dir.path + "/log.csv --out " + dir.path + "/run" + kTiny);
  INFO(r.out);
  REQUIRE(r.code == 0);
  REQUIRE(file_exists(dir.path + "/run/item_map.tsv"));
  r = run_ada("export --checkpoint " + dir.path + "/run --out " + dir.path + "/emb.npy --data " + dir.path +
              "/log.csv --users-out " + dir.path + "/users.npy --user-ids-out " + dir.path + "/users.tsv");
  INFO(r.out);
  REQUIRE(r.code == 0);
  AdaRetriever ret = AdaRetriever::load(dir.path + "/run");
  const std::vector<std::string>& names = ret.item_names();
  REQUIRE(names.size() == size_t(ret.num_items()));
  const std::vector<std::string> rows = lines_of(dir.path + "/emb.tsv");
  REQUIRE(rows.size() == names.size() - 1);
  std::map<std::string, ItemId> id_of;
  for (size_t i = 0; i < rows.size(); ++i) {
    REQUIRE(rows[i] == std::to_string(i + 1) + "\t" + names[i + 1]);
    id_of[names[i + 1]] = ItemId(i + 1);
  }
  const std::vector<std::string> users = lines_of(dir.path + "/users.tsv");
  REQUIRE(users.size() == by_user.size());
  std::vector<std::vector<ItemId>> hist;
  for (const std::string& u : users) {
    std::vector<ItemId> s;
    for (const std::string& item : by_user.at(u)) s.push_back(id_of.at(item));
    hist.push_back(s);
  }
  const NpyArray U = read_npy_f32(dir.path + "/users.npy");
  REQUIRE(U.shape == std::vector<int64_t>{int64_t(users.size()), ret.embedding_dim()});
  require_close(U.f32, ret.user_vectors(hist, 1));
}

TEST_CASE("ada export errors: clear message, non-zero exit, no partial outputs", "[cli]") {
  TempDir dir("err");
  // a base model without item bias, built directly (no training needed)
  SasRecConfig c;
  c.n_items = 41;
  c.hidden = 8;
  c.heads = 2;
  c.inner = 16;
  c.max_len = 10;
  c.item_bias = false;
  auto be = make_cpu_backend<float>();
  SasRec<float> m(c, *be);
  m.init(3);
  ModelInfo info;
  info.sasrec = c;
  const std::string ckpt = dir.path + "/m.safetensors";
  save_checkpoint(ckpt, m.params(), info);
  write_file_atomic(dir.path + "/ok.txt", "1 1 2 3\n2 4 5 6 7\n3 8 9 10\n");
  // an earlier export that failing runs must leave as it is
  fs::create_directories(dir.path + "/out");
  write_file_atomic(dir.path + "/out/items.npy", "earlier");
  const std::string out = " --out " + dir.path + "/out/items.npy ";

  SECTION("--help") {
    const Run r = run_ada("export --help");
    REQUIRE(r.code == 0);
    REQUIRE(r.out.find("--users-out") != std::string::npos);
  }
  SECTION("missing checkpoint") {
    const Run r = run_ada("export --checkpoint " + dir.path + "/nope.safetensors" + out);
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("nope.safetensors") != std::string::npos);
  }
  SECTION("an unwritable output path writes none of the outputs") {
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--data " + dir.path + "/ok.txt --users-out " +
                          dir.path + "/no/such/folder/users.npy");
    INFO(r.out);
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("no/such/folder/users.npy") != std::string::npos);
  }
  SECTION("-T below 1") {
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--data " + dir.path + "/ok.txt --users-out " +
                          dir.path + "/out/u.npy -T 0");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("-T must be >= 1, got 0") != std::string::npos);
  }
  SECTION("-T above 1 for a base model") {
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--data " + dir.path + "/ok.txt --users-out " +
                          dir.path + "/out/u.npy -T 3");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("base model") != std::string::npos);
  }
  SECTION("an item id beyond the model's catalog") {
    write_file_atomic(dir.path + "/big.txt", "1 1 2 3\n7 4 99 6\n");
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--data " + dir.path + "/big.txt --users-out " +
                          dir.path + "/out/u.npy");
    INFO(r.out);
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("big.txt") != std::string::npos);
    REQUIRE(r.out.find("user 7") != std::string::npos);
    REQUIRE(r.out.find("item id 99") != std::string::npos);
  }
  SECTION("--bias-out for a model without item bias") {
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--bias-out " + dir.path + "/out/b.npy");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("no item bias") != std::string::npos);
  }
  SECTION("--users-out without --data") {
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--users-out " + dir.path + "/out/u.npy");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("--data") != std::string::npos);
  }
  SECTION("the same path for two outputs") {
    const Run r = run_ada("export --checkpoint " + ckpt + out + "--data " + dir.path + "/ok.txt --users-out " +
                          dir.path + "/out/items.npy");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("two outputs") != std::string::npos);
  }
  REQUIRE(read_file(dir.path + "/out/items.npy") == "earlier");
  for (const auto& e : fs::directory_iterator(dir.path + "/out")) REQUIRE(e.path().filename() == "items.npy");

  // and the same model exports fine: no bias, so scores are <u, e_i> alone
  const Run ok = run_ada("export --checkpoint " + ckpt + out + "--data " + dir.path + "/ok.txt --users-out " +
                         dir.path + "/out/u.npy");
  INFO(ok.out);
  REQUIRE(ok.code == 0);
  REQUIRE(read_npy_f32(dir.path + "/out/items.npy").shape == std::vector<int64_t>{41, 8});
  REQUIRE(read_npy_f32(dir.path + "/out/u.npy").shape == std::vector<int64_t>{3, 8});
}
