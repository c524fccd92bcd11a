// NumPy .npy files: the bytes numpy.save writes, 64-byte header alignment, round trips, and clear
// errors for files that are not what they claim (truncated, wrong dtype, Fortran order...).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "ada/check.hpp"
#include "ada/fileio.hpp"
#include "ada/npy.hpp"

using namespace ada;
namespace fs = std::filesystem;

namespace {

struct TempDir {
  std::string path;
  TempDir() {
    path = (fs::temp_directory_path() / ("ada_npy_" + std::to_string(::getpid()))).string();
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~TempDir() { fs::remove_all(path); }
};

size_t header_end(const std::string& bytes) {  // version 1.0: data offset
  return 10 + size_t(static_cast<unsigned char>(bytes[8])) + (size_t(static_cast<unsigned char>(bytes[9])) << 8);
}

// A file with the given header text, padded numpy-style, and `data_bytes` bytes of zeros.
std::string with_header(const std::string& dict, size_t data_bytes, int major = 1) {
  const size_t prefix = major == 1 ? 10 : 12;
  std::string h = dict;
  h.append(64 - (prefix + h.size() + 1) % 64, ' ');
  h += '\n';
  std::string out("\x93NUMPY", 6);
  out += char(major);
  out += char(0);
  for (size_t i = 0; i < prefix - 8; ++i) out += char((h.size() >> (8 * i)) & 0xff);
  return out + h + std::string(data_bytes, '\0');
}

std::string error_of(const std::string& bytes, const std::string& name = "x.npy") {
  try {
    npy_decode(bytes, name);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

}  // namespace

TEST_CASE("npy: the bytes of np.save(np.arange(6, dtype='<f4').reshape(2, 3))", "[data]") {
  const std::vector<float> v = {0, 1, 2, 3, 4, 5};
  const std::string got = npy_encode(v.data(), {2, 3});
  const std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  std::string want("\x93NUMPY\x01\x00v\x00", 10);  // version 1.0, header length 118 ('v')
  want += dict;
  want.append(117 - dict.size(), ' ');
  want += '\n';
  REQUIRE(want.size() == 128);
  std::string data(24, '\0');
  std::memcpy(&data[0], v.data(), 24);
  want += data;
  REQUIRE(got == want);
  // the first value after the header is 0.0f, the last 5.0f (little-endian 0x40a00000)
  REQUIRE(got.substr(128 + 20) == std::string("\x00\x00\xa0\x40", 4));
}

TEST_CASE("npy: a 1-D shape is written (5,) and an int32 array '<i4'", "[data]") {
  const std::vector<int32_t> v = {1, -2, 3, -4, 5};
  const std::string got = npy_encode(v.data(), {5});
  REQUIRE(got.find("{'descr': '<i4', 'fortran_order': False, 'shape': (5,), }") == 10);
  REQUIRE(header_end(got) == 128);
  REQUIRE(got.size() == 128 + 20);
  const NpyArray a = npy_decode(got, "v.npy");
  REQUIRE(a.descr == "<i4");
  REQUIRE(a.shape == std::vector<int64_t>{5});
  REQUIRE(a.i32 == v);
  REQUIRE(a.f32.empty());
}

TEST_CASE("npy: the header is space-padded to a multiple of 64 bytes and ends with a newline", "[data]") {
  const std::vector<std::vector<int64_t>> shapes = {
      {}, {0}, {1}, {7}, {2, 3}, {151, 16}, {3, 4, 5}, {123456789012, 0}, {0, 123456789012}, {2, 3, 4, 5, 6, 7, 2, 1, 1}};
  for (const auto& shape : shapes) {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    std::vector<float> v(size_t(n), 1.5f);
    const std::string bytes = npy_encode(v.data(), shape);
    const size_t end = header_end(bytes);
    INFO("shape rank " << shape.size() << " header end " << end);
    REQUIRE(end % 64 == 0);
    REQUIRE(bytes[end - 1] == '\n');
    REQUIRE(bytes[end - 2] == ' ');
    REQUIRE(bytes.size() == end + size_t(n) * 4);
    const NpyArray a = npy_decode(bytes, "s.npy");
    REQUIRE(a.shape == shape);
    REQUIRE(a.f32 == v);
  }
  // a scalar: shape (), one value
  const float x = 2.5f;
  const NpyArray s = npy_decode(npy_encode(&x, {}), "s.npy");
  REQUIRE(s.shape.empty());
  REQUIRE(s.numel() == 1);
  REQUIRE(s.f32 == std::vector<float>{2.5f});
}

TEST_CASE("npy: write_npy / read_npy round trip through a file, replacing an earlier file", "[data]") {
  TempDir dir;
  const std::string p = dir.path + "/a.npy";
  std::vector<float> v(4 * 7);
  for (size_t i = 0; i < v.size(); ++i) v[i] = float(i) * 0.25f - 3.0f;
  write_npy(p, v.data(), {4, 7});
  // written as header + values from where they are: the same bytes as npy_encode
  REQUIRE(ada::read_file(p) == ada::npy_encode(v.data(), {4, 7}));
  const std::string header = ada::npy_header("<f4", {4, 7});
  REQUIRE(header.size() % 64 == 0);
  REQUIRE(ada::npy_encode(v.data(), {4, 7}) == header + std::string(reinterpret_cast<const char*>(v.data()), 4 * 28));
  REQUIRE_THROWS_WITH(ada::npy_header("<f8", {4}), Catch::Contains("<f8"));
  NpyArray a = read_npy_f32(p);
  REQUIRE(a.shape == std::vector<int64_t>{4, 7});
  REQUIRE(a.f32 == v);
  const std::vector<int32_t> w = {7, 8, 9};
  write_npy(p, w.data(), {3});
  REQUIRE(read_npy_i32(p).i32 == w);
  REQUIRE_THROWS_WITH(read_npy_f32(p), Catch::Contains("a.npy") && Catch::Contains("'<i4'"));
  for (const auto& e : fs::directory_iterator(dir.path)) REQUIRE(e.path().filename() == "a.npy");
}

TEST_CASE("npy: headers numpy variants write are read (no growth space, other key order, version 2.0)", "[data]") {
  NpyArray a = npy_decode(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 24), "a");
  REQUIRE(a.shape == std::vector<int64_t>{2, 3});
  a = npy_decode(with_header("{\"shape\": (3L,),  \"fortran_order\": False, \"descr\": \"<i4\"}", 12), "b");
  REQUIRE(a.descr == "<i4");
  REQUIRE(a.shape == std::vector<int64_t>{3});
  a = npy_decode(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (4,), }", 16, 2), "c");
  REQUIRE(a.f32.size() == 4);
}

TEST_CASE("npy: broken files give errors naming the file and the problem", "[data]") {
  const std::vector<float> v = {0, 1, 2, 3, 4, 5};
  const std::string good = npy_encode(v.data(), {2, 3});
  REQUIRE_THAT(error_of(good.substr(0, good.size() - 1), "cut.npy"),
               Catch::Contains("cut.npy") && Catch::Contains("truncated") && Catch::Contains("24 bytes"));
  REQUIRE_THAT(error_of(good.substr(0, 60), "hdr.npy"), Catch::Contains("hdr.npy") && Catch::Contains("truncated"));
  REQUIRE_THAT(error_of(good.substr(0, 9)), Catch::Contains("truncated"));
  REQUIRE_THAT(error_of(good + "xx", "long.npy"), Catch::Contains("long.npy") && Catch::Contains("2 unexpected bytes"));
  REQUIRE_THAT(error_of("PK\x03\x04 not numpy", "z.npz"), Catch::Contains("z.npz") && Catch::Contains("not a .npy"));
  REQUIRE_THAT(error_of(""), Catch::Contains("not a .npy"));
  std::string v9 = good;
  v9[6] = 9;
  REQUIRE_THAT(error_of(v9), Catch::Contains("version 9.0"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16), "f8.npy"),
               Catch::Contains("f8.npy") && Catch::Contains("'<f8'") && Catch::Contains("not supported"));
  REQUIRE_THAT(error_of(with_header("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8)),
               Catch::Contains("'>f4'"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", 24), "f.npy"),
               Catch::Contains("f.npy") && Catch::Contains("Fortran order"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f4', 'fortran_order': False, }", 0)),
               Catch::Contains("no 'shape' key"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2, -3), }", 0)),
               Catch::Contains("malformed .npy header"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }", 8)),
               Catch::Contains("True or False"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8)),
               Catch::Contains("unexpected key 'x'"));
  REQUIRE_THAT(error_of(with_header("{'descr': '<f4', 'fortran_order': False, 'shape': (2,)", 8)),
               Catch::Contains("malformed .npy header"));
  TempDir dir;
  REQUIRE_THROWS_WITH(read_npy(dir.path + "/missing.npy"), Catch::Contains("missing.npy"));
}
