// Data loading: the FMLP text format (reference counts on the shared files), generic CSV/TSV logs,
// the item id map, the leave-one-out split, the synthetic generator, and the error messages.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "ada/check.hpp"
#include "ada/data.hpp"
#include "tests/test_util.hpp"

namespace {

namespace fs = std::filesystem;

// A fresh folder per test (name + pid), removed at the end, so parallel test runs do not collide.
class TempDir {
 public:
  explicit TempDir(const std::string& name)
      : path_(fs::temp_directory_path() / ("ada_data_" + name + "_" + std::to_string(::getpid()))) {
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string write(const std::string& file, const std::string& text) const {
    const std::string p = (path_ / file).string();
    std::ofstream(p, std::ios::binary) << text;
    return p;
  }
  std::string path(const std::string& file) const { return (path_ / file).string(); }

 private:
  fs::path path_;
};

// Runs `fn`, which must throw ada::Error; returns the message.
std::string error_of(const std::function<void()>& fn) {
  try {
    fn();
  } catch (const ada::Error& e) {
    return e.what();
  }
  FAIL("no ada::Error was thrown");
  return "";
}

bool contains(const std::string& s, const std::string& part) {
  return s.find(part) != std::string::npos;
}

std::vector<ada::ItemId> row(const ada::Ragged& r, size_t i) {
  return std::vector<ada::ItemId>(r.row_begin(i), r.row_end(i));
}

}  // namespace

// ---- FMLP text: the shared files ----------------------------------------------------------------

TEST_CASE("load_fmlp on Beauty gives the reference counts and split", "[data]") {
  const std::string path = ada_test::shared_file_or_skip("data/beauty.txt");
  const ada::Dataset ds = ada::load_fmlp(path);
  CHECK(ds.name == "beauty");
  CHECK(ds.sequences.size() == 22363);
  CHECK(ds.n_items == 12102);
  CHECK(ds.num_actions() == 198502);
  CHECK(ds.dropped_users == 0);
  CHECK(ds.item_names.empty());
  CHECK(ds.user_names.front() == "1");
  CHECK(ds.user_names.back() == "22363");

  const auto samples = ada::train_samples(ds);
  CHECK(samples.size() == 153776);
  const ada::TrainSampler sampler(ds, 1);
  CHECK(sampler.num_samples() == 153776);
  CHECK(sampler.num_batches(1024) == 151);

  const ada::EvalSet valid = ada::make_eval_set(ds, false);
  const ada::EvalSet test = ada::make_eval_set(ds, true);
  REQUIRE(valid.users.size() == 22363);
  REQUIRE(test.users.size() == 22363);
  for (size_t u = 0; u < ds.sequences.size(); ++u) {
    const auto& s = ds.sequences[u];
    REQUIRE(valid.targets[u] == s[s.size() - 2]);
    REQUIRE(test.targets[u] == s.back());
    // The test input is the validation input plus the validation item.
    auto with_valid = row(valid.histories, u);
    with_valid.push_back(valid.targets[u]);
    REQUIRE(row(test.histories, u) == with_valid);
  }
  const ada::Ragged full = ada::full_histories(ds);
  CHECK(full.rows() == 22363);
  CHECK(full.ids.size() == 198502);
}

TEST_CASE("load_fmlp on Yelp with dedup drops 80 users and keeps item ids up to 20025", "[data]") {
  const std::string path = ada_test::shared_file_or_skip("data/yelp.txt");
  const ada::Dataset raw = ada::load_fmlp(path);
  CHECK(raw.sequences.size() == 30431);
  CHECK(raw.num_actions() == 316354);
  CHECK(raw.n_items == 20034);

  ada::FmlpOptions opt;
  opt.dedup = true;
  const ada::Dataset ds = ada::load_fmlp(path, opt);
  CHECK(ds.dropped_users == 80);
  CHECK(ds.sequences.size() == 30431 - 80);
  CHECK(ds.n_items == 20026);
  int64_t max_user = 0;
  for (const auto& name : ds.user_names) max_user = std::max<int64_t>(max_user, std::stoll(name));
  CHECK(max_user == 30429);
  for (const auto& s : ds.sequences) {
    REQUIRE(s.size() >= 3);
    REQUIRE(std::set<ada::ItemId>(s.begin(), s.end()).size() == s.size());
  }
}

// ---- FMLP text: small files ---------------------------------------------------------------------

TEST_CASE("load_fmlp tolerates tabs, repeated spaces, CR line ends and blank lines", "[data]") {
  TempDir dir("fmlp_lenient");
  const std::string p = dir.write("Mixed.TXT", "1 5 6 7\r\n\n2\t3  4 \t 9\r\n   \n10 1 2 3");
  const ada::Dataset ds = ada::load_fmlp(p);
  CHECK(ds.name == "mixed");
  REQUIRE(ds.sequences.size() == 3);
  CHECK(ds.sequences[0] == std::vector<ada::ItemId>{5, 6, 7});
  CHECK(ds.sequences[1] == std::vector<ada::ItemId>{3, 4, 9});
  CHECK(ds.sequences[2] == std::vector<ada::ItemId>{1, 2, 3});
  CHECK(ds.user_names == std::vector<std::string>{"1", "2", "10"});
  CHECK(ds.n_items == 10);
}

TEST_CASE("load_fmlp dedup keeps the first occurrence and drops users under min_len", "[data]") {
  TempDir dir("fmlp_dedup");
  const std::string p = dir.write("d.txt", "1 4 2 4 3 2\n2 7 7 7 8\n3 1 2 3\n");
  ada::FmlpOptions opt;
  opt.dedup = true;
  const ada::Dataset ds = ada::load_fmlp(p, opt);
  REQUIRE(ds.sequences.size() == 2);
  CHECK(ds.sequences[0] == std::vector<ada::ItemId>{4, 2, 3});
  CHECK(ds.sequences[1] == std::vector<ada::ItemId>{1, 2, 3});
  CHECK(ds.dropped_users == 1);  // user 2 is left with {7, 8}
  CHECK(ds.n_items == 5);        // max id of the users kept, + 1 (8 was dropped)

  const ada::Dataset no_dedup = ada::load_fmlp(p);  // without dedup user 2 has 4 items
  CHECK(no_dedup.sequences.size() == 3);
  CHECK(no_dedup.dropped_users == 0);
  CHECK(no_dedup.sequences[0] == std::vector<ada::ItemId>{4, 2, 4, 3, 2});
  CHECK(no_dedup.n_items == 9);
}

TEST_CASE("load_fmlp errors name the file, the line and the bad value", "[data]") {
  TempDir dir("fmlp_errors");
  SECTION("line with a user but no items") {
    const std::string p = dir.write("a.txt", "1 2 3 4\n2\n");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p + ":2:"));
    CHECK(contains(msg, "no items"));
  }
  SECTION("non-numeric item id") {
    const std::string p = dir.write("b.txt", "1 2 3 4\n\n2 5 x3 6\n");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p + ":3:"));
    CHECK(contains(msg, "\"x3\""));
    CHECK(contains(msg, "not a non-negative integer"));
  }
  SECTION("negative item id") {
    const std::string p = dir.write("c.txt", "1 2 -3 4\n");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p + ":1:"));
    CHECK(contains(msg, "\"-3\""));
  }
  SECTION("item id that overflows") {
    const std::string p = dir.write("d.txt", "1 2 3 4\n2 99999999999999999999 1 2\n");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p + ":2:"));
    CHECK(contains(msg, "99999999999999999999"));
  }
  SECTION("item id 0 is reserved for padding") {
    const std::string p = dir.write("e.txt", "1 2 0 4\n");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p + ":1:"));
    CHECK(contains(msg, "padding"));
  }
  SECTION("repeated user id names both lines") {
    const std::string p = dir.write("f.txt", "1 2 3 4\n7 1 2 3\n\n7 4 5 6\n");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p + ":4:"));
    CHECK(contains(msg, "\"7\""));
    CHECK(contains(msg, "line 2"));
  }
  SECTION("empty file") {
    const std::string p = dir.write("g.txt", "");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p));
    CHECK(contains(msg, "empty"));
  }
  SECTION("blank lines only") {
    const std::string p = dir.write("h.txt", "\n  \n\r\n");
    CHECK(contains(error_of([&] { ada::load_fmlp(p); }), p + ": empty"));
  }
  SECTION("missing file") {
    const std::string p = dir.path("nope.txt");
    const std::string msg = error_of([&] { ada::load_fmlp(p); });
    CHECK(contains(msg, p));
    CHECK(contains(msg, "not found"));
  }
  SECTION("every user under min_len") {
    const std::string p = dir.write("i.txt", "1 2 3\n2 4\n");
    ada::FmlpOptions opt;
    opt.min_len = 3;
    CHECK(contains(error_of([&] { ada::load_fmlp(p, opt); }), "2 users dropped"));
  }
}

// ---- generic CSV/TSV ----------------------------------------------------------------------------

TEST_CASE("load_interactions reads a CSV with a header, sorts by time and remaps items", "[data]") {
  TempDir dir("csv_header");
  // Columns in a different order than the defaults; times out of order; float and integer times.
  const std::string p = dir.write("Log.csv",
                                  "Timestamp,itemId,user_id\n"
                                  "30,B,alice\n"
                                  "10,A,alice\n"
                                  "5.5,Z,bob\n"
                                  "20,C,alice\n"
                                  "1e1,B,bob\n"
                                  "2,A,bob\n");
  const ada::Dataset ds = ada::load_interactions(p);
  CHECK(ds.name == "log");
  REQUIRE(ds.sequences.size() == 2);
  CHECK(ds.user_names == std::vector<std::string>{"alice", "bob"});
  // alice: A(10) C(20) B(30) -> 1 2 3; bob: A(2) Z(5.5) B(10) -> 1 4 3.
  CHECK(ds.sequences[0] == std::vector<ada::ItemId>{1, 2, 3});
  CHECK(ds.sequences[1] == std::vector<ada::ItemId>{1, 4, 3});
  CHECK(ds.item_names == std::vector<std::string>{"<pad>", "A", "C", "B", "Z"});
  CHECK(ds.n_items == 5);
  CHECK(ds.dropped_users == 0);
}

TEST_CASE("load_interactions reads a TSV without a header and keeps file order for equal times",
          "[data]") {
  TempDir dir("tsv_plain");
  const std::string p = dir.write("log.tsv",
                                  "u1\t100\t7\r\n"
                                  "u2\t200\t1\n"
                                  "u1\t101\t7\n"
                                  "u1\t102\t3\n"
                                  "\n"
                                  "u2\t100\t2\n"
                                  "u2\t300\t3\n");
  const ada::Dataset ds = ada::load_interactions(p);
  REQUIRE(ds.sequences.size() == 2);
  CHECK(ds.user_names == std::vector<std::string>{"u1", "u2"});
  // u1: 102(t3) 100(t7) 101(t7, after 100 in the file) ; u2: 200(t1) 100(t2) 300(t3).
  CHECK(ds.item_names == std::vector<std::string>{"<pad>", "102", "100", "101", "200", "300"});
  CHECK(ds.sequences[0] == std::vector<ada::ItemId>{1, 2, 3});
  CHECK(ds.sequences[1] == std::vector<ada::ItemId>{4, 2, 5});
}

TEST_CASE("load_interactions takes columns by name or index and explicit delimiters", "[data]") {
  TempDir dir("csv_columns");
  SECTION("by index, no header, semicolons") {
    const std::string p = dir.write("a.csv", "x;1;i1;u\nx;2;i2;u\nx;3;i3;u\n");
    ada::CsvOptions opt;
    opt.user_col = "3";
    opt.item_col = "2";
    opt.time_col = "1";
    const ada::Dataset ds = ada::load_interactions(p, opt);
    REQUIRE(ds.sequences.size() == 1);
    CHECK(ds.user_names[0] == "u");
    CHECK(ds.item_names == std::vector<std::string>{"<pad>", "i1", "i2", "i3"});
  }
  SECTION("by name, case-insensitive, whitespace-delimited") {
    const std::string p = dir.write("b.txt", "who what when\nu  a 3\nu b 2\nu c 1\n");
    ada::CsvOptions opt;
    opt.delimiter = ' ';
    opt.user_col = "WHO";
    opt.item_col = "what";
    opt.time_col = "When";
    const ada::Dataset ds = ada::load_interactions(p, opt);
    REQUIRE(ds.sequences.size() == 1);
    CHECK(ds.item_names == std::vector<std::string>{"<pad>", "c", "b", "a"});
  }
  SECTION("forced header with numeric names") {
    const std::string p = dir.write("c.csv", "user,item,timestamp\n1,2,3\n1,3,4\n1,4,5\n");
    ada::CsvOptions opt;
    opt.header = 1;
    const ada::Dataset ds = ada::load_interactions(p, opt);
    CHECK(ds.num_actions() == 3);
  }
}

TEST_CASE("load_interactions k-core filtering reaches a fixed point", "[data]") {
  TempDir dir("csv_kcore");
  // Items a,b,c are shared by u1..u3; u4 has a,b,x where x appears only once. With kcore 3:
  // x is dropped (1 interaction), which leaves u4 with 2 < 3 interactions, so u4 goes; that drops
  // a and b from 4 to 3 interactions each, still fine. u5 has only d,d,d (dedup off): d has 3.
  std::string text;
  for (const char* u : {"u1", "u2", "u3"})
    for (int t = 0; t < 3; ++t)
      text += std::string(u) + "," + "abc"[t] + "," + std::to_string(t) + "\n";
  text += "u4,a,0\nu4,b,1\nu4,x,2\nu5,d,0\nu5,d,1\nu5,d,2\n";
  const std::string p = dir.write("k.csv", text);

  ada::CsvOptions opt;
  opt.kcore = 3;
  const ada::Dataset ds = ada::load_interactions(p, opt);
  CHECK(ds.user_names == std::vector<std::string>{"u1", "u2", "u3", "u5"});
  CHECK(ds.dropped_users == 1);
  CHECK(ds.item_names == std::vector<std::string>{"<pad>", "a", "b", "c", "d"});
  // Every remaining user and item has >= 3 interactions.
  std::vector<int> item_count(size_t(ds.n_items), 0);
  for (const auto& s : ds.sequences) {
    CHECK(s.size() >= 3);
    for (auto id : s) ++item_count[size_t(id)];
  }
  for (int id = 1; id < ds.n_items; ++id) CHECK(item_count[size_t(id)] >= 3);

  // With dedup, u5 is left with a single d, so it goes, and d disappears with it.
  opt.dedup = true;
  const ada::Dataset dd = ada::load_interactions(p, opt);
  CHECK(dd.user_names == std::vector<std::string>{"u1", "u2", "u3"});
  CHECK(dd.dropped_users == 2);
  CHECK(dd.n_items == 4);
}

TEST_CASE("load_interactions errors name the file and the line", "[data]") {
  TempDir dir("csv_errors");
  SECTION("missing column") {
    const std::string p = dir.write("a.csv", "user,item,time\nu,i,1\nu,i2\n");
    const std::string msg = error_of([&] { ada::load_interactions(p); });
    CHECK(contains(msg, p + ":3:"));
    CHECK(contains(msg, "missing column"));
  }
  SECTION("non-numeric timestamp") {
    const std::string p = dir.write("b.tsv", "u\ti\t1\nu\tj\t2\n\nu\tk\tyesterday\n");
    const std::string msg = error_of([&] { ada::load_interactions(p); });
    CHECK(contains(msg, p + ":4:"));
    CHECK(contains(msg, "\"yesterday\""));
  }
  SECTION("unknown header column") {
    const std::string p = dir.write("c.csv", "user,item,time\nu,i,1\n");
    ada::CsvOptions opt;
    opt.time_col = "clock";
    const std::string msg = error_of([&] { ada::load_interactions(p, opt); });
    CHECK(contains(msg, p + ":1:"));
    CHECK(contains(msg, "\"clock\""));
  }
  SECTION("header without a default column name") {
    const std::string p = dir.write("d.csv", "uid,item,time\nu,i,1\n");
    CHECK(contains(error_of([&] { ada::load_interactions(p); }), p + ":1: no user column"));
  }
  SECTION("empty file") {
    const std::string p = dir.write("e.csv", "\n\n");
    CHECK(contains(error_of([&] { ada::load_interactions(p); }), p + ": empty file"));
  }
  SECTION("missing file") {
    const std::string p = dir.path("none.csv");
    CHECK(
        contains(error_of([&] { ada::load_interactions(p); }), p + ": interaction file not found"));
  }
}

// ---- item id map --------------------------------------------------------------------------------

TEST_CASE("item map round trip and validation", "[data]") {
  TempDir dir("item_map");
  const std::string p =
      dir.write("log.csv", "user,item,ts\nu,Q,1\nu,R s,2\nu,T,3\nv,R s,1\nv,X,2\nv,Q,3\n");
  const ada::Dataset ds = ada::load_interactions(p);
  const std::string map = dir.path("items.tsv");
  ada::save_item_map(map, ds);
  CHECK(ada::load_item_map(map) == ds.item_names);

  // FMLP data (ids as they are) writes the identity map.
  ada::Dataset fmlp;
  fmlp.sequences = {{1, 2, 3}};
  fmlp.n_items = 4;
  ada::save_item_map(map, fmlp);
  CHECK(ada::load_item_map(map) == std::vector<std::string>{"<pad>", "1", "2", "3"});

  const std::string gap = dir.write("gap.tsv", "1\ta\n3\tc\n");
  CHECK(contains(error_of([&] { ada::load_item_map(gap); }), "id 2 is missing"));
  const std::string dup = dir.write("dup.tsv", "1\ta\n2\tb\n1\tc\n");
  CHECK(contains(error_of([&] { ada::load_item_map(dup); }), dup + ":3:"));
  const std::string bad = dir.write("bad.tsv", "1\ta\nx\tb\n");
  CHECK(contains(error_of([&] { ada::load_item_map(bad); }), bad + ":2:"));
  const std::string notab = dir.write("notab.tsv", "1 a\n");
  CHECK(contains(error_of([&] { ada::load_item_map(notab); }), notab + ":1:"));
}

// ---- leave-one-out split ------------------------------------------------------------------------

TEST_CASE("leave-one-out split on a small dataset", "[data]") {
  ada::Dataset ds;
  ds.sequences = {{5, 6, 7}, {1, 2, 3, 4, 9}};
  ds.n_items = 10;
  const auto samples = ada::train_samples(ds);
  REQUIRE(samples.size() == 1 + 3);
  CHECK((samples[0].user == 0 && samples[0].pos == 0));
  CHECK((samples[1].user == 1 && samples[1].pos == 0));
  CHECK((samples[3].user == 1 && samples[3].pos == 2));

  const ada::EvalSet valid = ada::make_eval_set(ds, false);
  CHECK(valid.targets == std::vector<ada::ItemId>{6, 4});
  CHECK(row(valid.histories, 0) == std::vector<ada::ItemId>{5});
  CHECK(row(valid.histories, 1) == std::vector<ada::ItemId>{1, 2, 3});
  const ada::EvalSet test = ada::make_eval_set(ds, true);
  CHECK(test.targets == std::vector<ada::ItemId>{7, 9});
  CHECK(row(test.histories, 1) == std::vector<ada::ItemId>{1, 2, 3, 4});
  const ada::Ragged full = ada::full_histories(ds);
  CHECK(row(full, 1) == ds.sequences[1]);

  ds.sequences.push_back({1, 2});
  CHECK(contains(error_of([&] { ada::train_samples(ds); }), "needs >= 3"));
}

// ---- synthetic data -----------------------------------------------------------------------------

TEST_CASE("generate_synthetic is deterministic, in range and repeat-free", "[data]") {
  ada::SyntheticOptions opt;
  opt.n_users = 500;
  const ada::Dataset a = ada::generate_synthetic(opt);
  const ada::Dataset b = ada::generate_synthetic(opt);
  CHECK(a.sequences == b.sequences);
  CHECK(a.name == "synthetic");
  CHECK(a.n_items == opt.n_items + 1);
  REQUIRE(a.sequences.size() == 500);
  CHECK(a.user_names.size() == 500);
  for (const auto& s : a.sequences) {
    REQUIRE(int(s.size()) >= opt.min_len);
    REQUIRE(int(s.size()) <= opt.max_len);
    REQUIRE(std::set<ada::ItemId>(s.begin(), s.end()).size() == s.size());
    for (auto id : s) REQUIRE((id >= 1 && id <= opt.n_items));
  }
  opt.seed += 1;
  const ada::Dataset c = ada::generate_synthetic(opt);
  size_t same = 0;
  for (size_t u = 0; u < c.sequences.size(); ++u) same += c.sequences[u] == a.sequences[u];
  CHECK(same < 5);
}

TEST_CASE("generate_synthetic has interest clusters, local drift and popularity skew", "[data]") {
  const ada::SyntheticOptions opt;  // the defaults: 3000 users, 1500 items, 30 clusters
  const ada::Dataset ds = ada::generate_synthetic(opt);
  auto cluster = [&](ada::ItemId id) { return int64_t(id - 1) * opt.n_clusters / opt.n_items; };
  size_t pairs = 0, same_cluster = 0;
  double same_gap = 0;
  std::set<int64_t> user_clusters;
  double mean_clusters = 0;
  std::vector<int> count(size_t(ds.n_items), 0);
  for (const auto& s : ds.sequences) {
    user_clusters.clear();
    for (size_t i = 0; i < s.size(); ++i) {
      ++count[size_t(s[i])];
      user_clusters.insert(cluster(s[i]));
      if (i == 0) continue;
      ++pairs;
      if (cluster(s[i]) == cluster(s[i - 1])) {
        ++same_cluster;
        same_gap += std::abs(s[i] - s[i - 1]);
      }
    }
    mean_clusters += double(user_clusters.size());
  }
  mean_clusters /= double(ds.sequences.size());
  const double frac = double(same_cluster) / double(pairs);
  // Chance level is 1/30; the generator stays in the interest ~(1 - switch)(1 - noise) of the time.
  CHECK(frac > 0.5);
  CHECK(frac > 10.0 / opt.n_clusters);
  // Inside a cluster of 50 ids a random pair is ~17 apart; the walk keeps neighbours close.
  CHECK(same_gap / double(same_cluster) < 6.0);
  // A user's items come from few clusters (3 interests plus the odd noise item).
  CHECK(mean_clusters < 4.5);
  // Popularity: the first ids of each cluster are drawn more often than the last ones.
  int64_t head = 0, tail = 0;
  for (int c = 0; c < opt.n_clusters; ++c) {
    const int b = c * 50 + 1;
    for (int q = 0; q < 5; ++q) head += count[size_t(b + q)], tail += count[size_t(b + 45 + q)];
  }
  CHECK(head > 2 * tail);
}
