// NumPy .npy reader and writer (see npy.hpp).
#include "ada/npy.hpp"

#include <cctype>
#include <cstring>
#include <limits>

#include "ada/check.hpp"
#include "ada/fileio.hpp"

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "npy: the raw data is written as this host's floats");

namespace ada {

namespace {

constexpr char kMagic[] = "\x93NUMPY";
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;                // numpy's ARRAY_ALIGN
constexpr size_t kGrowthAxisMaxDigits = 21;  // numpy's GROWTH_AXIS_MAX_DIGITS

// Python's repr of a shape tuple: (), (5,), (2, 3).
std::string shape_repr(const std::vector<int64_t>& shape) {
  std::string s = "(";
  for (size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) s += ", ";
    s += std::to_string(shape[i]);
  }
  if (shape.size() == 1) s += ",";
  return s + ")";
}

int64_t numel_of(const std::vector<int64_t>& shape, const std::string& name) {
  int64_t n = 1;
  for (int64_t d : shape) {
    ADA_CHECK(d >= 0, name << ": negative dimension in shape " << shape_repr(shape));
    ADA_CHECK(d == 0 || n <= std::numeric_limits<int64_t>::max() / 4 / d,
              name << ": shape " << shape_repr(shape) << " is too large");
    n *= d;
  }
  return n;
}

}  // namespace

std::string npy_header(const std::string& descr, const std::vector<int64_t>& shape) {
  ADA_CHECK(descr == "<f4" || descr == "<i4", "npy: cannot write dtype " << descr);
  numel_of(shape, "npy");  // (checks the shape)
  // numpy's _write_array_header: the dict with sorted keys, spare space for the first axis to grow,
  // then _wrap_header pads with spaces and '\n' to a multiple of 64 (always at least one space).
  std::string header = std::string("{'descr': '") + descr + "', 'fortran_order': False, 'shape': " +
                       shape_repr(shape) + ", }";
  if (!shape.empty()) {
    const size_t digits = std::to_string(shape[0]).size();
    if (digits < kGrowthAxisMaxDigits) header.append(kGrowthAxisMaxDigits - digits, ' ');
  }
  const size_t prefix = kMagicLen + 2 + 2;  // magic, version, uint16 length
  const size_t pad = kAlign - (prefix + header.size() + 1) % kAlign;
  header.append(pad, ' ');
  header += '\n';
  ADA_CHECK(header.size() <= 65535, "npy: header of " << header.size() << " bytes does not fit format 1.0");
  std::string out;
  out.reserve(prefix + header.size());
  out.append(kMagic, kMagicLen);
  out += char(1);
  out += char(0);
  out += char(header.size() & 0xff);
  out += char((header.size() >> 8) & 0xff);
  out += header;
  return out;
}

namespace {

std::string encode(const char* descr, const void* data, const std::vector<int64_t>& shape) {
  const int64_t n = numel_of(shape, "npy");
  ADA_CHECK(n == 0 || data != nullptr, "npy: no data for shape " << shape_repr(shape));
  std::string out = npy_header(descr, shape);
  if (n > 0) out.append(static_cast<const char*>(data), size_t(n) * 4);
  return out;
}

// The header, then the values from where they are (no copy of the whole file).
void write_pieces(const std::string& path, const char* descr, const void* data, const std::vector<int64_t>& shape) {
  const int64_t n = numel_of(shape, "npy");
  ADA_CHECK(n == 0 || data != nullptr, "npy: no data for shape " << shape_repr(shape));
  const std::string header = npy_header(descr, shape);
  write_file_atomic(path, {{header.data(), header.size()}, {data, size_t(n) * 4}});
}

// A tiny parser for the header dict numpy writes (a Python literal).
class HeaderParser {
 public:
  HeaderParser(const std::string& text, const std::string& name) : s_(text), name_(name) {}

  void parse(std::string& descr, bool& fortran, std::vector<int64_t>& shape) {
    bool has_descr = false, has_fortran = false, has_shape = false;
    ws();
    expect('{');
    while (true) {
      ws();
      if (peek() == '}') {
        ++i_;
        break;
      }
      const std::string key = quoted();
      ws();
      expect(':');
      ws();
      if (key == "descr") {
        descr = quoted();
        has_descr = true;
      } else if (key == "fortran_order") {
        fortran = boolean();
        has_fortran = true;
      } else if (key == "shape") {
        shape = tuple();
        has_shape = true;
      } else {
        fail("unexpected key '" + key + "'");
      }
      ws();
      if (peek() == ',') {
        ++i_;
      } else if (peek() != '}') {
        fail("expected ',' or '}'");
      }
    }
    ws();
    if (i_ != s_.size()) fail("unexpected text after the dict");
    if (!has_descr) fail("no 'descr' key");
    if (!has_fortran) fail("no 'fortran_order' key");
    if (!has_shape) fail("no 'shape' key");
  }

 private:
  [[noreturn]] void fail(const std::string& what) const {
    ADA_FAIL(name_ << ": malformed .npy header (" << what << " at offset " << i_ << "): " << printable());
  }
  std::string printable() const {
    std::string p;
    for (char c : s_.substr(0, 200)) p += std::isprint(static_cast<unsigned char>(c)) ? c : '?';
    while (!p.empty() && p.back() == ' ') p.pop_back();
    return p;
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void ws() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  void expect(char c) {
    if (peek() != c) fail(std::string("expected '") + c + "'");
    ++i_;
  }
  std::string quoted() {
    const char q = peek();
    if (q != '\'' && q != '"') fail("expected a quoted string");
    const size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) fail("unterminated string");
    std::string v = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return v;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      return false;
    }
    fail("expected True or False");
  }
  std::vector<int64_t> tuple() {
    std::vector<int64_t> dims;
    expect('(');
    ws();
    while (peek() != ')') {
      if (!std::isdigit(static_cast<unsigned char>(peek()))) fail("expected a non-negative integer in the shape");
      int64_t v = 0;
      while (std::isdigit(static_cast<unsigned char>(peek()))) {
        if (v > (std::numeric_limits<int64_t>::max() - 9) / 10) fail("dimension too large");
        v = v * 10 + (s_[i_++] - '0');
      }
      if (peek() == 'L') ++i_;  // Python 2 longs
      dims.push_back(v);
      ws();
      if (peek() == ',') {
        ++i_;
        ws();
      } else if (peek() != ')') {
        fail("expected ',' or ')' in the shape");
      }
    }
    ++i_;
    return dims;
  }

  const std::string& s_;
  const std::string& name_;
  size_t i_ = 0;
};

}  // namespace

int64_t NpyArray::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string npy_encode(const float* data, const std::vector<int64_t>& shape) { return encode("<f4", data, shape); }
std::string npy_encode(const int32_t* data, const std::vector<int64_t>& shape) { return encode("<i4", data, shape); }

NpyArray npy_decode(const std::string& b, const std::string& name) {
  ADA_CHECK(b.size() >= kMagicLen + 2 && std::memcmp(b.data(), kMagic, kMagicLen) == 0,
            name << ": not a .npy file (no \\x93NUMPY magic at the start; " << b.size() << " bytes)");
  const int major = static_cast<unsigned char>(b[6]), minor = static_cast<unsigned char>(b[7]);
  ADA_CHECK((major == 1 || major == 2 || major == 3) && minor == 0,
            name << ": .npy format version " << major << "." << minor << " is not supported (1.0, 2.0, 3.0)");
  const size_t len_bytes = major == 1 ? 2 : 4;
  ADA_CHECK(b.size() >= kMagicLen + 2 + len_bytes,
            name << ": truncated .npy file (" << b.size() << " bytes end inside the header length)");
  size_t hlen = 0;
  for (size_t j = 0; j < len_bytes; ++j) hlen |= size_t(static_cast<unsigned char>(b[8 + j])) << (8 * j);
  const size_t data_start = kMagicLen + 2 + len_bytes + hlen;
  ADA_CHECK(data_start <= b.size(), name << ": truncated .npy file (the header claims " << hlen
                                         << " bytes, the file has " << b.size() << " bytes in all)");
  const std::string header = b.substr(kMagicLen + 2 + len_bytes, hlen);
  NpyArray a;
  bool fortran = false;
  HeaderParser(header, name).parse(a.descr, fortran, a.shape);
  ADA_CHECK(a.descr == "<f4" || a.descr == "<i4",
            name << ": dtype '" << a.descr << "' is not supported (float32 '<f4' or int32 '<i4')");
  ADA_CHECK(!fortran, name << ": the array is in Fortran order (fortran_order: True); only C order is supported");
  const int64_t n = numel_of(a.shape, name);
  const size_t need = size_t(n) * 4, have = b.size() - data_start;
  ADA_CHECK(have >= need, name << ": truncated .npy file (shape " << shape_repr(a.shape) << " of " << a.descr
                               << " needs " << need << " bytes of data, the file has " << have << ")");
  ADA_CHECK(have == need, name << ": " << have - need << " unexpected bytes after the data of shape "
                               << shape_repr(a.shape) << " (" << need << " bytes)");
  if (a.descr == "<f4") {
    a.f32.resize(size_t(n));
    if (n > 0) std::memcpy(a.f32.data(), b.data() + data_start, need);
  } else {
    a.i32.resize(size_t(n));
    if (n > 0) std::memcpy(a.i32.data(), b.data() + data_start, need);
  }
  return a;
}

void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape) {
  write_pieces(path, "<f4", data, shape);
}
void write_npy(const std::string& path, const int32_t* data, const std::vector<int64_t>& shape) {
  write_pieces(path, "<i4", data, shape);
}

NpyArray read_npy(const std::string& path) { return npy_decode(read_file(path), path); }

NpyArray read_npy_f32(const std::string& path) {
  NpyArray a = read_npy(path);
  ADA_CHECK(a.descr == "<f4", path << ": dtype '" << a.descr << "', expected float32 '<f4'");
  return a;
}
NpyArray read_npy_i32(const std::string& path) {
  NpyArray a = read_npy(path);
  ADA_CHECK(a.descr == "<i4", path << ": dtype '" << a.descr << "', expected int32 '<i4'");
  return a;
}

}  // namespace ada
