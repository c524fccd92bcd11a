// The `ada` tool as a user meets it: help, outputs, clear errors with non-zero exits, and no lost or
// half-written output when a run fails.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "ada/fileio.hpp"
#include "tests/cli_run.hpp"

namespace fs = std::filesystem;
using ada::file_exists;
using ada::read_file;
using ada::write_file_atomic;

namespace {

using ada_test::Run;
using ada_test::run_ada;

std::string temp_dir(const std::string& name) {
  const fs::path p = fs::temp_directory_path() / ("ada_cli_" + name + "_" + std::to_string(::getpid()));
  fs::remove_all(p);
  fs::create_directories(p);
  return p.string();
}

// A tiny model and two short epochs keep a full `ada train` run to a few seconds.
const char* kTinyRun = " --epochs 2 --max-batches 3 --hidden 16 --heads 2 --inner 32 --threads 2 ";

}  // namespace

TEST_CASE("ada --help and every subcommand's --help succeed", "[cli]") {
  for (const char* sub : {"", "train ", "eval ", "demo "}) {
    const Run r = run_ada(std::string(sub) + "--help");
    INFO(r.out);
    REQUIRE(r.code == 0);
    REQUIRE(r.out.find("--") != std::string::npos);
  }
}

TEST_CASE("ada train on synthetic data writes the model, result.json, metrics.tsv and train.log", "[cli]") {
  const std::string dir = temp_dir("train");
  const Run r = run_ada("train --out " + dir + kTinyRun + "--seed 4");
  INFO(r.out);
  REQUIRE(r.code == 0);
  for (const char* f : {"model.safetensors", "result.json", "metrics.tsv", "train.log", "last_state.safetensors"})
    REQUIRE(file_exists(dir + "/" + f));
  const auto j = nlohmann::json::parse(read_file(dir + "/result.json"));
  for (const char* k : {"dataset", "model", "ada", "device", "seed", "epochs_trained", "best_epoch", "valid",
                        "test", "epoch_seconds", "eval_seconds", "train_seconds", "parameters"})
    REQUIRE(j.contains(k));
  REQUIRE(j["model"] == "sasrec");
  REQUIRE(j["ada"] == false);
  REQUIRE(j["seed"] == 4);
  REQUIRE(j["epochs_trained"] == 2);
  for (const char* k : {"hit@50", "ndcg@50", "hit@100", "ndcg@100"}) {
    REQUIRE(j["test"][k].get<double>() >= 0.0);
    REQUIRE(j["test"][k].get<double>() <= 1.0);
  }
  const std::string tsv = read_file(dir + "/metrics.tsv");
  REQUIRE(tsv.find("hit@50\t") != std::string::npos);
  REQUIRE(read_file(dir + "/train.log").find("epoch   1") != std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("ada eval on a checkpoint reproduces the metrics training reported", "[cli]") {
  const std::string dir = temp_dir("eval");
  // a small FMLP file the model trains and evaluates on
  std::string data;
  for (int u = 1; u <= 300; ++u) {
    data += std::to_string(u);
    for (int i = 0; i < 6 + u % 5; ++i) data += " " + std::to_string(1 + (u * 7 + i * 3) % 120);
    data += "\n";
  }
  write_file_atomic(dir + "/toy.txt", data);
  Run r = run_ada("train --data " + dir + "/toy.txt --out " + dir + "/run" + kTinyRun);
  INFO(r.out);
  REQUIRE(r.code == 0);
  r = run_ada("eval --json --checkpoint " + dir + "/run/model.safetensors --data " + dir + "/toy.txt");
  INFO(r.out);
  REQUIRE(r.code == 0);
  const auto ev = nlohmann::json::parse(r.out.substr(r.out.find('{')));
  const auto res = nlohmann::json::parse(read_file(dir + "/run/result.json"));
  for (const char* k : {"hit@50", "ndcg@50", "hit@100", "ndcg@100"}) {
    REQUIRE(ev["test"][k].get<double>() == Approx(res["test"][k].get<double>()).margin(1e-12));
    REQUIRE(ev["valid"][k].get<double>() == Approx(res["valid"][k].get<double>()).margin(1e-12));
  }
  fs::remove_all(dir);
}

TEST_CASE("bad input gives a clear error naming file and line, a non-zero exit, and keeps earlier outputs", "[cli]") {
  const std::string dir = temp_dir("bad");
  // an earlier run's output that a failing run must not touch
  fs::create_directories(dir + "/out");
  write_file_atomic(dir + "/out/result.json", "{\"earlier\": true}\n");

  SECTION("missing data file") {
    const Run r = run_ada("train --data " + dir + "/nope.txt --out " + dir + "/out");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("nope.txt") != std::string::npos);
  }
  SECTION("malformed line") {
    write_file_atomic(dir + "/bad.txt", "1 2 3 4\n2 5 x7 9\n");
    const Run r = run_ada("train --data " + dir + "/bad.txt --out " + dir + "/out");
    INFO(r.out);
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("bad.txt:2") != std::string::npos);
    REQUIRE(r.out.find("x7") != std::string::npos);
  }
  SECTION("empty file") {
    write_file_atomic(dir + "/empty.txt", "");
    const Run r = run_ada("train --data " + dir + "/empty.txt --out " + dir + "/out");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("empty.txt") != std::string::npos);
  }
  SECTION("truncated checkpoint") {
    write_file_atomic(dir + "/toy.txt", "1 1 2 3 4\n2 2 3 4 5\n");
    write_file_atomic(dir + "/cut.safetensors", std::string("\x40\x00\x00\x00\x00\x00\x00\x00{\"a\"", 12));
    const Run r = run_ada("eval --checkpoint " + dir + "/cut.safetensors --data " + dir + "/toy.txt");
    INFO(r.out);
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("cut.safetensors") != std::string::npos);
  }
  SECTION("an unknown setting in --config") {
    write_file_atomic(dir + "/cfg.json", "{\"epochs\": 1, \"learning_speed\": 3}");
    const Run r = run_ada("train --config " + dir + "/cfg.json --out " + dir + "/out");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("learning_speed") != std::string::npos);
  }
  SECTION("--device cuda where no CUDA device is usable") {
    const Run r = run_ada("train --device cuda --out " + dir + "/out");
    REQUIRE(r.code != 0);
    REQUIRE(r.out.find("--device cuda") != std::string::npos);
  }
  REQUIRE(read_file(dir + "/out/result.json") == "{\"earlier\": true}\n");
  for (const auto& e : fs::directory_iterator(dir + "/out"))
    REQUIRE(e.path().filename().string().find(".tmp") == std::string::npos);
  fs::remove_all(dir);
}

TEST_CASE("a config file sets options and command-line flags override it", "[cli]") {
  const std::string dir = temp_dir("config");
  write_file_atomic(dir + "/cfg.json", "{\"epochs\": 3, \"hidden\": 8, \"heads\": 2, \"inner\": 16, \"max_batches\": 2, \"seed\": 11}");
  const Run r = run_ada("train --config " + dir + "/cfg.json --epochs 1 --out " + dir + "/out");
  INFO(r.out);
  REQUIRE(r.code == 0);
  const auto j = nlohmann::json::parse(read_file(dir + "/out/result.json"));
  REQUIRE(j["epochs_trained"] == 1);  // the flag won
  REQUIRE(j["seed"] == 11);           // from the file
  // hidden 8, inner 16, 2 layers, synthetic catalog of 1501 ids, max_len 50
  const int64_t D = 8, I = 16, N = 1501;
  const int64_t layer = 4 * (D * D + D) + 2 * D + (I * D + I) + (D * I + D) + 2 * D;
  REQUIRE(j["parameters"] == N * D + N + 51 * D + 2 * D + 2 * layer);
  fs::remove_all(dir);
}

TEST_CASE("ada train --ada with lists shorter than 50 validates on hit@K and says so", "[cli]") {
  const std::string dir = temp_dir("shortk");
  const Run r = run_ada("train --ada --rounds 3 --total-k 12 --out " + dir + kTinyRun + "--seed 5");
  INFO(r.out);
  REQUIRE(r.code == 0);
  REQUIRE(r.out.find("early stopping uses hit@12") != std::string::npos);
  const auto j = nlohmann::json::parse(read_file(dir + "/result.json"));
  REQUIRE(j["ada"] == true);
  REQUIRE(j["test"].contains("hit@12"));
  REQUIRE_FALSE(j["test"].contains("hit@50"));  // the lists hold 12 items: no cutoff beyond them
  REQUIRE(read_file(dir + "/train.log").find("valid hit@12") != std::string::npos);
  fs::remove_all(dir);
}

// `ada retrieve` as a user runs it on a trained model: --seq and --input, plain and --json output, k
// over T rounds (the first k % T rounds one item more), an empty history, and clear errors. One
// training run serves every block (plain blocks, not SECTIONs, which would each train again).
TEST_CASE("ada retrieve: --seq, --input, --json, an empty history and clear errors", "[cli]") {
  const std::string dir = temp_dir("retrieve");
  const Run t = run_ada("train --ada --rounds 2 --total-k 10 --out " + dir + "/m" + kTinyRun + "--seed 6");
  INFO(t.out);
  REQUIRE(t.code == 0);
  const std::string ck = " --checkpoint " + dir + "/m ";
  auto ids_of = [](const std::string& line) {
    std::vector<long> ids;
    std::istringstream is(line);
    for (long v; is >> v;) ids.push_back(v);
    return ids;
  };
  auto check_list = [](const std::vector<long>& ids, size_t k, const std::vector<long>& history) {
    REQUIRE(ids.size() == k);
    std::vector<long> sorted = ids;
    std::sort(sorted.begin(), sorted.end());
    REQUIRE(std::adjacent_find(sorted.begin(), sorted.end()) == sorted.end());  // distinct
    for (long id : ids) {
      REQUIRE(id >= 1);     // never padding
      REQUIRE(id <= 1500);  // the synthetic catalog
      REQUIRE(std::find(history.begin(), history.end(), id) == history.end());
    }
  };

  {  // --seq, plain
    const Run r = run_ada("retrieve" + ck + "--seq \"3 17 42\" -k 10 -T 3");
    INFO(r.out);
    REQUIRE(r.code == 0);
    check_list(ids_of(r.out), 10, {3, 17, 42});
  }
  {  // --json: items with score and round, rounds of 4, 3 and 3
    const Run r = run_ada("retrieve" + ck + "--seq \"3 17 42\" -k 10 -T 3 --json");
    INFO(r.out);
    REQUIRE(r.code == 0);
    const auto j = nlohmann::json::parse(r.out);
    REQUIRE(j["items"].size() == 10);
    std::vector<long> ids;
    std::vector<int> rounds;
    for (const auto& it : j["items"]) {
      ids.push_back(it["item"].get<long>());
      rounds.push_back(it["round"].get<int>());
      REQUIRE(std::isfinite(it["score"].get<double>()));
    }
    check_list(ids, 10, {3, 17, 42});
    REQUIRE(rounds == std::vector<int>{0, 0, 0, 0, 1, 1, 1, 2, 2, 2});
    // the plain output lists the same items
    const Run p = run_ada("retrieve" + ck + "--seq \"3 17 42\" -k 10 -T 3");
    REQUIRE(ids_of(p.out) == ids);
  }
  {  // --timing: the list unchanged, and one line on stderr with the parts of the time
    const Run plain = run_ada("retrieve" + ck + "--seq \"3 17 42\" -k 10 -T 3");
    const Run r = run_ada("retrieve" + ck + "--seq \"3 17 42\" -k 10 -T 3 --timing");
    INFO(r.out);
    REQUIRE(r.code == 0);
    const size_t at = r.out.find("timing: 1 users in ");
    REQUIRE(at != std::string::npos);
    const std::string line = r.out.substr(at, r.out.find('\n', at) - at);
    // one search per round: each gives a round's list and the next round's context
    for (const char* part : {"users/s): forward ", ", device wait 0.000 ms, 3 searches ", ", bookkeeping ", ", request "})
      REQUIRE(line.find(part) != std::string::npos);
    std::string rest = r.out;
    rest.erase(at, line.size() + 1);
    REQUIRE(rest == plain.out);
  }
  {  // an empty --seq is a new user
    const Run r = run_ada("retrieve" + ck + "--seq \"\" -k 5 -T 2");
    INFO(r.out);
    REQUIRE(r.code == 0);
    check_list(ids_of(r.out), 5, {});
  }
  {  // --input: one line per user, an empty history among them
    write_file_atomic(dir + "/in.txt", "alice 3 17\nbob\ncarol 5 6 7\n");
    const Run r = run_ada("retrieve" + ck + "--input " + dir + "/in.txt -k 6 -T 2");
    INFO(r.out);
    REQUIRE(r.code == 0);
    std::istringstream is(r.out);
    std::string line;
    const char* users[] = {"alice:", "bob:", "carol:"};
    const std::vector<long> hist[] = {{3, 17}, {}, {5, 6, 7}};
    for (int u = 0; u < 3; ++u) {
      REQUIRE(std::getline(is, line));
      REQUIRE(line.rfind(users[u], 0) == 0);
      check_list(ids_of(line.substr(std::strlen(users[u]))), 6, hist[u]);
    }
  }
  {  // errors name the value
    struct Case {
      std::string args, says;
    };
    write_file_atomic(dir + "/bad.txt", "alice 3 17\nbob 4 x9\n");
    const Case cases[] = {
        {"--seq \"3 17\" -k 10 -T 0", "-T: must be greater than 0, got 0"},
        {"--seq \"3 17\" -k 0 -T 2", "-k: must be greater than 0, got 0"},
        {"--seq \"3 17\" -k 100000 -T 2", "k = 100000"},
        {"--seq \"3 99999\" -k 10 -T 2", "99999"},
        {"--input " + dir + "/bad.txt -k 10 -T 2", "bad.txt:2"},
        {"-k 10 -T 2", "exactly one of --seq and --input"},
        {"--seq 3 --input " + dir + "/bad.txt -k 10", "exactly one of --seq and --input"},
    };
    for (const Case& c : cases) {
      const Run r = run_ada("retrieve" + ck + c.args);
      INFO(c.args << "\n" << r.out);
      REQUIRE(r.code != 0);
      REQUIRE(r.out.find(c.says) != std::string::npos);
    }
  }
  fs::remove_all(dir);
}
