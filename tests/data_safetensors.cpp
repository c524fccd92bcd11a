// safetensors reading/writing and the atomic file helpers: round trips, the reference fixture, and
// every kind of damaged file the reader must reject with an error naming the file.
#include <catch2/catch.hpp>

#include <signal.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "ada/check.hpp"
#include "ada/fileio.hpp"
#include "ada/safetensors.hpp"
#include "test_util.hpp"

namespace fs = std::filesystem;

namespace {

// A fresh folder under the system temp dir, removed with everything in it at scope exit.
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (fs::temp_directory_path() / "ada_st_test_XXXXXX").string();
    REQUIRE(::mkdtemp(tmpl.data()) != nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return path_ + "/" + name; }
  const std::string& path() const { return path_; }
  std::set<std::string> listing() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(path_)) names.insert(e.path().filename().string());
    return names;
  }

 private:
  std::string path_;
};

ada::SafeTensors sample_tensors() {
  ada::SafeTensors st;
  const std::vector<float> f32{1.5f, -2.25f, 3.0f};  // odd byte count: later tensors start unaligned
  const std::vector<double> f64{0.1, -1e300, 4.0, 5.5, 6.0, 7.0};
  const std::vector<int32_t> i32{-7, 0, 2147483647, -2147483647 - 1};
  const std::vector<int64_t> i64{int64_t(1) << 60, -3};
  const float scalar = 42.f;
  st.tensors["a.f32"] = ada::make_blob({3}, f32.data());
  st.tensors["b.f64"] = ada::make_blob({2, 3}, f64.data());
  st.tensors["c.i32"] = ada::make_blob({2, 1, 2}, i32.data());
  st.tensors["d.i64"] = ada::make_blob({2}, i64.data());
  st.tensors["e.scalar"] = ada::make_blob({}, &scalar);
  st.tensors["f.empty"] = ada::make_blob({0, 4}, static_cast<const float*>(nullptr));
  st.metadata["format"] = "pt";
  st.metadata["note"] = "unicode \xc3\xa9 and \"quotes\"";
  return st;
}

// Header length and parsed header JSON of a written file.
std::pair<uint64_t, nlohmann::json> header_of(const std::string& bytes) {
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  return {n, nlohmann::json::parse(bytes.substr(8, size_t(n)))};
}

// A file made of a hand-written header and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& header, size_t data_bytes) {
  std::string out(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(&out[0], &n, 8);
  return out + header + std::string(data_bytes, '\0');
}

// Reading `bytes` written to `path` fails with an ada::Error that names the file and says `what`.
void require_read_error(const std::string& path, const std::string& bytes, const std::string& what) {
  ada::write_file_atomic(path, bytes);
  INFO("file of " << bytes.size() << " bytes, expecting: " << what);
  try {
    ada::read_safetensors(path);
    FAIL("read_safetensors accepted a bad file");
  } catch (const ada::Error& e) {
    const std::string msg = e.what();
    INFO("message: " << msg);
    CHECK(msg.find(path) != std::string::npos);
    CHECK(msg.find(what) != std::string::npos);
  }
}

}  // namespace

TEST_CASE("safetensors round trip of every dtype with metadata", "[data]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const ada::SafeTensors st = sample_tensors();
  ada::write_safetensors(path, st);
  CHECK(dir.listing() == std::set<std::string>{"model.safetensors"});

  const ada::SafeTensors back = ada::read_safetensors(path);
  CHECK(back.metadata == st.metadata);
  REQUIRE(back.tensors.size() == st.tensors.size());
  for (const auto& kv : st.tensors) {
    INFO(kv.first);
    REQUIRE(back.has(kv.first));
    const ada::TensorBlob& b = back.at(kv.first);
    CHECK(b.dtype == kv.second.dtype);
    CHECK(b.shape == kv.second.shape);
    CHECK(b.data == kv.second.data);
  }
  CHECK(back.at("a.f32").to_f32() == std::vector<float>{1.5f, -2.25f, 3.0f});
  CHECK(back.at("b.f64").to_f64()[1] == -1e300);
  CHECK(back.at("c.i32").to_i64() == std::vector<int64_t>{-7, 0, 2147483647, -2147483647 - 1});
  CHECK(back.at("d.i64").to_i64() == std::vector<int64_t>{int64_t(1) << 60, -3});
  CHECK(back.at("e.scalar").numel() == 1);
  CHECK(back.at("e.scalar").to_f32() == std::vector<float>{42.f});
  CHECK(back.at("f.empty").numel() == 0);
  CHECK(back.at("f.empty").to_f32().empty());

  // Layout that Python's safetensors expects: 8-byte aligned data start, tensors in name order,
  // offsets relative to the data start and contiguous.
  const std::string bytes = ada::read_file(path);
  const auto [n, header] = header_of(bytes);
  CHECK((8 + n) % 8 == 0);
  CHECK(header.at("__metadata__").at("format") == "pt");
  uint64_t cursor = 0;
  for (const auto& kv : st.tensors) {
    const auto& off = header.at(kv.first).at("data_offsets");
    CHECK(off[0].get<uint64_t>() == cursor);
    cursor = off[1].get<uint64_t>();
    if (!kv.second.data.empty())
      CHECK(std::memcmp(bytes.data() + 8 + n + off[0].get<uint64_t>(), kv.second.data.data(),
                        kv.second.data.size()) == 0);
  }
  CHECK(8 + n + cursor == bytes.size());
  CHECK(header.at("b.f64").at("dtype") == "F64");
  CHECK(header.at("c.i32").at("shape") == nlohmann::json::array({2, 1, 2}));

  // the same file opened for one tensor at a time: the header's view and each tensor's bytes
  const ada::SafeTensorsFile f(path);
  CHECK(f.path() == path);
  CHECK(f.metadata() == st.metadata);
  std::vector<std::string> names;
  for (const auto& kv : st.tensors) names.push_back(kv.first);
  CHECK(f.names() == names);
  for (const auto& kv : st.tensors) {
    INFO(kv.first);
    CHECK(f.has(kv.first));
    CHECK(f.dtype(kv.first) == kv.second.dtype);
    CHECK(f.shape(kv.first) == kv.second.shape);
    CHECK(f.blob(kv.first).data == kv.second.data);
    std::vector<uint8_t> raw(kv.second.data.size() + 1, 0xAB);  // one guard byte
    f.read_raw(kv.first, raw.data());
    CHECK(std::equal(kv.second.data.begin(), kv.second.data.end(), raw.begin()));
    CHECK(raw.back() == 0xAB);
  }
  CHECK_FALSE(f.has("nope"));
  CHECK_THROWS_WITH(f.shape("nope"), Catch::Contains("tensor 'nope' not found") && Catch::Contains("a.f32"));

  SECTION("no __metadata__ when there is none") {
    ada::SafeTensors plain;
    plain.tensors["x"] = st.tensors.at("a.f32");
    ada::write_safetensors(path, plain);
    const auto [n2, h2] = header_of(ada::read_file(path));
    CHECK((8 + n2) % 8 == 0);
    CHECK_FALSE(h2.contains("__metadata__"));
    CHECK(ada::read_safetensors(path).metadata.empty());
  }
  SECTION("an empty file set round-trips") {
    ada::write_safetensors(path, ada::SafeTensors{});
    const auto back2 = ada::read_safetensors(path);
    CHECK(back2.tensors.empty());
  }
}

// Tensors written from views (save_checkpoint's way: the parameters' memory, no copy) give the same
// file as the same tensors in blobs; a view whose bytes disagree with its shape is refused by name.
TEST_CASE("safetensors written from views equal the blobs' file", "[data]") {
  TempDir dir;
  const ada::SafeTensors st = sample_tensors();
  ada::write_safetensors(dir.file("blobs.safetensors"), st);
  std::map<std::string, ada::TensorView> views;
  for (const auto& kv : st.tensors) views.emplace(kv.first, ada::view_of(kv.second));
  ada::write_safetensors(dir.file("views.safetensors"), views, st.metadata);
  CHECK(ada::read_file(dir.file("views.safetensors")) == ada::read_file(dir.file("blobs.safetensors")));
  const std::vector<float> v = {1.5f, -2.25f, 3.0f};
  const ada::TensorView f = ada::view_f32({3}, v.data());
  CHECK(f.dtype == ada::DType::kF32);
  CHECK(f.bytes == 12);
  CHECK(f.data == v.data());
  ada::write_safetensors(dir.file("one.safetensors"), {{"w", f}}, {});
  CHECK(ada::read_safetensors(dir.file("one.safetensors")).at("w").to_f32() == v);
  ada::TensorView bad = f;
  bad.bytes = 8;
  CHECK_THROWS_WITH(ada::write_safetensors(dir.file("bad.safetensors"), {{"w", bad}}, {}),
                    Catch::Contains("bad.safetensors") && Catch::Contains("'w' holds 8 bytes"));
  CHECK(!ada::file_exists(dir.file("bad.safetensors")));
}

TEST_CASE("safetensors reads through a pipe as from a file, and FileReader reads exact ranges", "[data]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  ada::write_safetensors(path, sample_tensors());
  const std::string bytes = ada::read_file(path);

  // a FIFO is not a regular file: FileReader reads it whole when opening, then serves the ranges
  const std::string fifo = dir.file("pipe");
  REQUIRE(::mkfifo(fifo.c_str(), 0600) == 0);
  std::thread feeder([&] {
    FILE* f = std::fopen(fifo.c_str(), "wb");
    if (f) {
      std::fwrite(bytes.data(), 1, bytes.size(), f);
      std::fclose(f);
    }
  });
  const ada::SafeTensors from_pipe = ada::read_safetensors(fifo);
  feeder.join();
  const ada::SafeTensors from_file = ada::read_safetensors(path);
  REQUIRE(from_pipe.tensors.size() == from_file.tensors.size());
  for (const auto& kv : from_file.tensors) {
    INFO(kv.first);
    CHECK(from_pipe.at(kv.first).data == kv.second.data);
    CHECK(from_pipe.at(kv.first).shape == kv.second.shape);
  }
  CHECK(from_pipe.metadata == from_file.metadata);

  ada::FileReader r(path);
  REQUIRE(r.size() == bytes.size());
  std::string part(10, '\0');
  r.read(5, 10, &part[0]);
  CHECK(part == bytes.substr(5, 10));
  r.read(bytes.size(), 0, &part[0]);  // an empty range at the end is fine
  CHECK_THROWS_WITH(r.read(bytes.size() - 3, 4, &part[0]), Catch::Contains(path) && Catch::Contains("truncated"));
  // the file shrinks after it was opened: the read that runs past its new end says so
  REQUIRE(::truncate(path.c_str(), off_t(bytes.size() / 2)) == 0);
  std::string rest(bytes.size() - 8, '\0');
  CHECK_THROWS_WITH(r.read(8, rest.size(), &rest[0]),
                    Catch::Contains(path) && Catch::Contains("truncated while reading"));
  CHECK_THROWS_AS(ada::FileReader(dir.file("missing")), ada::Error);
  CHECK_THROWS_AS(ada::FileReader(dir.path()), ada::Error);  // a folder
}

TEST_CASE("safetensors conversions and lookups", "[data]") {
  const std::vector<int64_t> big{(int64_t(1) << 53) + 1};
  const auto blob = ada::make_blob({1}, big.data());
  CHECK_THROWS_AS(blob.to_f32(), ada::Error);  // not exactly representable
  CHECK_THROWS_AS(blob.to_f64(), ada::Error);
  const std::vector<int64_t> small{3, -4};
  CHECK(ada::make_blob({2}, small.data()).to_f32() == std::vector<float>{3.f, -4.f});
  const std::vector<float> f{1.f};
  CHECK_THROWS_AS(ada::make_blob({1}, f.data()).to_i64(), ada::Error);
  const std::vector<double> d{0.1};
  CHECK(ada::make_blob({1}, d.data()).to_f32() == std::vector<float>{0.1f});  // F64 -> F32 allowed
  CHECK_THROWS_AS(ada::make_blob({-1}, f.data()), ada::Error);

  ada::SafeTensors st;
  st.tensors["present"] = ada::make_blob({1}, f.data());
  try {
    st.at("missing.weight");
    FAIL("at() found a missing tensor");
  } catch (const ada::Error& e) {
    CHECK(std::string(e.what()).find("missing.weight") != std::string::npos);
  }
}

TEST_CASE("safetensors reads the reference fixture", "[data]") {
  const std::string path = ada_test::shared_file_or_skip("fixtures/ada_sasrec_tiny.safetensors");
  const ada::SafeTensors st = ada::read_safetensors(path);
  REQUIRE(st.has("item_embedding.weight"));
  const auto& emb = st.at("item_embedding.weight");
  CHECK(emb.dtype == ada::DType::kF32);
  CHECK(emb.shape == std::vector<int64_t>{301, 64});
  CHECK(emb.to_f32().size() == 301u * 64u);
  const auto& filt = st.at("low_filter.complex_weight");
  CHECK(filt.shape == std::vector<int64_t>{1, 11, 64, 2});
  CHECK(st.at("item_bias").shape == std::vector<int64_t>{301});
  CHECK(st.at("position_embedding.weight").shape == std::vector<int64_t>{51, 64});
  for (const auto& kv : st.tensors) {
    INFO(kv.first);
    for (float x : kv.second.to_f32()) REQUIRE(std::isfinite(x));
  }

  // Our writer's copy reads back identically.
  TempDir dir;
  ada::write_safetensors(dir.file("copy.safetensors"), st);
  const ada::SafeTensors copy = ada::read_safetensors(dir.file("copy.safetensors"));
  REQUIRE(copy.tensors.size() == st.tensors.size());
  for (const auto& kv : st.tensors) {
    CHECK(copy.at(kv.first).shape == kv.second.shape);
    CHECK(copy.at(kv.first).data == kv.second.data);
  }
}

TEST_CASE("safetensors rejects truncated files naming them", "[data]") {
  TempDir dir;
  const std::string good_path = dir.file("good.safetensors");
  ada::write_safetensors(good_path, sample_tensors());
  const std::string bytes = ada::read_file(good_path);
  const auto [n, header] = header_of(bytes);
  const std::string path = dir.file("cut.safetensors");
  // inside the length field, inside the header, inside the data, one byte short
  for (size_t cut : {size_t(0), size_t(3), size_t(7), size_t(8), size_t(8 + n / 2), size_t(8 + n),
                     size_t(8 + n + 5), bytes.size() - 1}) {
    INFO("cut at " << cut << " of " << bytes.size());
    require_read_error(path, bytes.substr(0, cut), "truncated");
  }
  // The reported sizes say what is missing.
  require_read_error(path, bytes.substr(0, size_t(8 + n + 5)), "file has 5");
}

TEST_CASE("safetensors rejects corrupt headers naming the file", "[data]") {
  TempDir dir;
  const std::string path = dir.file("bad.safetensors");
  SECTION("JSON syntax") {
    require_read_error(path, raw_file("{\"x\": {\"dtype\": \"F32\", ", 0), "corrupt header JSON");
    require_read_error(path, raw_file("not json at all", 0), "corrupt header JSON");
  }
  SECTION("structure") {
    require_read_error(path, raw_file("[1, 2, 3]", 0), "must be an object");
    require_read_error(path, raw_file(R"({"x": {"dtype": "F32", "shape": [1]}})", 4), "data_offsets");
    require_read_error(path, raw_file(R"({"x": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}})", 2),
                       "BF16");
    require_read_error(path, raw_file(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 4]}})", 4),
                       "shape");
    require_read_error(path, raw_file(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 0]}})", 4),
                       "data_offsets");
    require_read_error(path, raw_file(R"({"__metadata__": {"a": 1}})", 0), "__metadata__");
  }
  SECTION("offsets that do not match the shape") {
    require_read_error(path, raw_file(R"({"x": {"dtype": "F32", "shape": [2, 2], "data_offsets": [0, 12]}})", 12),
                       "needs 16");
    require_read_error(path, raw_file(R"({"x": {"dtype": "I64", "shape": [2], "data_offsets": [0, 8]}})", 8),
                       "needs 16");
  }
  SECTION("overlaps, gaps and trailing bytes") {
    require_read_error(path,
                       raw_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                                R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                                12),
                       "overlaps");
    require_read_error(path,
                       raw_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},)"
                                R"( "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                                12),
                       "gap");
    require_read_error(path, raw_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 8),
                       "trailing");
    require_read_error(path, raw_file(R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
                       "truncated");
  }
  SECTION("a hand-written valid file with unsorted offsets and padding is accepted") {
    ada::write_file_atomic(path, raw_file(R"({"b": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]},)"
                                          R"( "a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}}   )",
                                          8));
    const auto st = ada::read_safetensors(path);
    CHECK(st.tensors.size() == 2);
    CHECK(st.at("a").dtype == ada::DType::kF32);
  }
  SECTION("a missing file") {
    const std::string missing = dir.file("nope.safetensors");
    try {
      ada::read_safetensors(missing);
      FAIL("read a missing file");
    } catch (const ada::Error& e) {
      CHECK(std::string(e.what()).find(missing) != std::string::npos);
    }
  }
}

namespace {

// Limits the size of files this process may write and ignores SIGXFSZ, so a write past the limit
// fails with EFBIG instead of killing the test; restored at scope exit.
class FileSizeLimit {
 public:
  explicit FileSizeLimit(rlim_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved_) == 0);
    old_handler_ = ::signal(SIGXFSZ, SIG_IGN);
    rlimit lim = saved_;
    lim.rlim_cur = bytes;
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &lim) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved_);
    ::signal(SIGXFSZ, old_handler_);
  }

 private:
  rlimit saved_{};
  void (*old_handler_)(int) = nullptr;
};

}  // namespace

TEST_CASE("a failed write leaves no temp file and keeps the old target", "[data]") {
  TempDir dir;
  const std::string path = dir.file("model.safetensors");
  const std::string old_content = "previous contents";
  ada::write_file_atomic(path, old_content);
  std::vector<float> big(100000, 1.f);
  ada::SafeTensors st;
  st.tensors["w"] = ada::make_blob({int64_t(big.size())}, big.data());

  SECTION("the write itself fails (file size limit)") {
    {
      FileSizeLimit limit(4096);
      try {
        ada::write_safetensors(path, st);
        FAIL("write past the file size limit succeeded");
      } catch (const ada::Error& e) {
        CHECK(std::string(e.what()).find(path) != std::string::npos);
      }
    }
    CHECK(dir.listing() == std::set<std::string>{"model.safetensors"});
    CHECK(ada::read_file(path) == old_content);
  }
  SECTION("the folder does not exist") {
    const std::string missing = dir.file("no/such/dir/model.safetensors");
    try {
      ada::write_safetensors(missing, st);
      FAIL("wrote into a missing folder");
    } catch (const ada::Error& e) {
      CHECK(std::string(e.what()).find(missing) != std::string::npos);
    }
    CHECK(dir.listing() == std::set<std::string>{"model.safetensors"});
    CHECK(ada::read_file(path) == old_content);
  }
  SECTION("the rename fails (target is a non-empty folder)") {
    const std::string target = dir.file("taken");
    ada::make_dirs(target);
    ada::write_file_atomic(target + "/inside", "keep me");
    CHECK_THROWS_AS(ada::write_safetensors(target, st), ada::Error);
    CHECK(dir.listing() == std::set<std::string>{"model.safetensors", "taken"});
    CHECK(ada::read_file(target + "/inside") == "keep me");
  }
}

TEST_CASE("file helpers", "[data]") {
  TempDir dir;
  const std::string nested = dir.file("a/b/c");
  CHECK_FALSE(ada::file_exists(nested));
  ada::make_dirs(nested);
  ada::make_dirs(nested);  // idempotent
  ada::make_dirs(nested + "/");
  CHECK(ada::file_exists(nested));
  const std::string f = nested + "/x.bin";
  std::string bytes("binary\0data\xff", 12);
  bytes += std::string(200000, 'z');
  ada::write_file_atomic(f, bytes);
  CHECK(ada::read_file(f) == bytes);
  ada::write_file_atomic(f, "short");  // replaces, never appends
  CHECK(ada::read_file(f) == "short");
  ada::write_file_atomic(f, "");
  CHECK(ada::read_file(f).empty());
  // pieces are written in order, empty ones included
  const std::string p1 = "head:", p3(100000, 'q');
  ada::write_file_atomic(f, {{p1.data(), p1.size()}, {nullptr, 0}, {p3.data(), p3.size()}});
  CHECK(ada::read_file(f) == p1 + p3);
  CHECK(dir.listing() == std::set<std::string>{"a"});
  CHECK_THROWS_AS(ada::read_file(dir.file("missing")), ada::Error);
  CHECK_THROWS_AS(ada::read_file(nested), ada::Error);  // a folder is not a file
  CHECK_THROWS_AS(ada::make_dirs(f + "/sub"), ada::Error);  // a file is in the way

  // A bare relative name writes into the current folder.
  const fs::path cwd = fs::current_path();
  fs::current_path(dir.path());
  ada::write_file_atomic("plain.txt", "ok");
  fs::current_path(cwd);
  CHECK(ada::read_file(dir.file("plain.txt")) == "ok");
}
