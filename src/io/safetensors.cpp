// safetensors reader/writer (see safetensors.hpp). The reader trusts nothing in the file: every
// length and offset is checked against the bytes actually present before anything is copied.
#include "ada/safetensors.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <sstream>

#include "ada/check.hpp"
#include "ada/fileio.hpp"

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.cpp copies raw little-endian bytes and needs a little-endian host"
#endif

namespace ada {

namespace {

using Json = nlohmann::json;

constexpr uint64_t kHeaderLengthBytes = 8;
// Same guard as the reference implementation: a header this large is a corrupt length field.
constexpr uint64_t kMaxHeaderBytes = 100ull << 20;
constexpr const char* kMetadataKey = "__metadata__";

size_t dtype_size(DType t) {
  switch (t) {
    case DType::kF32: return 4;
    case DType::kF64: return 8;
    case DType::kI32: return 4;
    case DType::kI64: return 8;
  }
  ADA_FAIL("invalid DType value " << int(t));
}

const char* dtype_name(DType t) {
  switch (t) {
    case DType::kF32: return "F32";
    case DType::kF64: return "F64";
    case DType::kI32: return "I32";
    case DType::kI64: return "I64";
  }
  ADA_FAIL("invalid DType value " << int(t));
}

bool parse_dtype(const std::string& s, DType& out) {
  if (s == "F32") out = DType::kF32;
  else if (s == "F64") out = DType::kF64;
  else if (s == "I32") out = DType::kI32;
  else if (s == "I64") out = DType::kI64;
  else return false;
  return true;
}

std::string shape_text(const std::vector<int64_t>& shape) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < shape.size(); ++i) os << (i ? ", " : "") << shape[i];
  os << "]";
  return os.str();
}

// numel with overflow detection; false when the product does not fit in int64.
bool checked_numel(const std::vector<int64_t>& shape, int64_t& out) {
  int64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (d != 0 && n > std::numeric_limits<int64_t>::max() / d) return false;
    n *= d;
  }
  out = n;
  return true;
}

template <typename T>
std::vector<T> load_values(const TensorBlob& b) {
  std::vector<T> v(size_t(b.numel()));
  ADA_CHECK(b.data.size() == v.size() * sizeof(T),
            "tensor data holds " << b.data.size() << " bytes but shape " << shape_text(b.shape)
                                 << " " << dtype_name(b.dtype) << " needs " << v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), b.data.data(), b.data.size());
  return v;
}

template <typename To, typename From>
std::vector<To> convert_all(const std::vector<From>& in) {
  return std::vector<To>(in.begin(), in.end());
}

// Integer -> floating conversion is allowed only when every value survives the round trip.
template <typename To, typename From>
std::vector<To> convert_exact(const std::vector<From>& in, const char* from, const char* to) {
  std::vector<To> out(in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    out[i] = static_cast<To>(in[i]);
    ADA_CHECK(static_cast<From>(out[i]) == in[i],
              "cannot convert " << from << " to " << to << " exactly: element " << i << " = " << in[i]);
  }
  return out;
}

template <typename T>
TensorBlob make_blob_impl(const std::vector<int64_t>& shape, const T* values, DType dtype) {
  TensorBlob b;
  b.dtype = dtype;
  b.shape = shape;
  int64_t n = 0;
  ADA_CHECK(checked_numel(shape, n), "make_blob: invalid shape " << shape_text(shape));
  ADA_CHECK(n == 0 || values != nullptr, "make_blob: null values for shape " << shape_text(shape));
  b.data.resize(size_t(n) * sizeof(T));
  if (n > 0) std::memcpy(b.data.data(), values, b.data.size());
  return b;
}

uint64_t read_u64_le(const char* p) {
  uint64_t v = 0;
  std::memcpy(&v, p, 8);
  return v;
}

// A non-negative JSON integer, or an error naming the file, tensor and field.
uint64_t json_uint(const Json& j, const std::string& path, const std::string& name,
                   const char* field) {
  ADA_CHECK(j.is_number_unsigned(), path << ": tensor '" << name << "': " << field
                                         << " must hold non-negative integers, got " << j.dump());
  return j.get<uint64_t>();
}

struct Entry {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;
};

}  // namespace

int64_t TensorBlob::numel() const {
  int64_t n = 0;
  ADA_CHECK(checked_numel(shape, n), "tensor has an invalid shape " << shape_text(shape));
  return n;
}

std::vector<float> TensorBlob::to_f32() const {
  switch (dtype) {
    case DType::kF32: return load_values<float>(*this);
    case DType::kF64: return convert_all<float>(load_values<double>(*this));
    case DType::kI32: return convert_exact<float>(load_values<int32_t>(*this), "I32", "F32");
    case DType::kI64: return convert_exact<float>(load_values<int64_t>(*this), "I64", "F32");
  }
  ADA_FAIL("invalid DType value " << int(dtype));
}

std::vector<double> TensorBlob::to_f64() const {
  switch (dtype) {
    case DType::kF32: return convert_all<double>(load_values<float>(*this));
    case DType::kF64: return load_values<double>(*this);
    case DType::kI32: return convert_all<double>(load_values<int32_t>(*this));
    case DType::kI64: return convert_exact<double>(load_values<int64_t>(*this), "I64", "F64");
  }
  ADA_FAIL("invalid DType value " << int(dtype));
}

std::vector<int64_t> TensorBlob::to_i64() const {
  switch (dtype) {
    case DType::kI32: return convert_all<int64_t>(load_values<int32_t>(*this));
    case DType::kI64: return load_values<int64_t>(*this);
    case DType::kF32:
    case DType::kF64:
      ADA_FAIL("cannot convert a " << dtype_name(dtype) << " tensor to I64");
  }
  ADA_FAIL("invalid DType value " << int(dtype));
}

TensorBlob make_blob(const std::vector<int64_t>& shape, const float* values) {
  return make_blob_impl(shape, values, DType::kF32);
}
TensorBlob make_blob(const std::vector<int64_t>& shape, const double* values) {
  return make_blob_impl(shape, values, DType::kF64);
}
TensorBlob make_blob(const std::vector<int64_t>& shape, const int32_t* values) {
  return make_blob_impl(shape, values, DType::kI32);
}
TensorBlob make_blob(const std::vector<int64_t>& shape, const int64_t* values) {
  return make_blob_impl(shape, values, DType::kI64);
}

namespace {

// The error for a tensor name a file does not have, listing up to 8 of the names it has.
template <class Map>
[[noreturn]] void tensor_not_found(const std::string& name, const Map& tensors) {
  std::ostringstream os;
  size_t shown = 0;
  for (const auto& kv : tensors) {
    if (shown == 8) {
      os << ", ...";
      break;
    }
    os << (shown++ ? ", " : "") << kv.first;
  }
  ADA_FAIL("tensor '" << name << "' not found (" << tensors.size() << " tensors: " << os.str() << ")");
}

}  // namespace

const TensorBlob& SafeTensors::at(const std::string& name) const {
  auto it = tensors.find(name);
  if (it == tensors.end()) tensor_not_found(name, tensors);
  return it->second;
}

SafeTensorsFile::SafeTensorsFile(const std::string& path) : path_(path), file_(std::make_unique<FileReader>(path)) {
  // The header only: the tensors' bytes are read when asked for (blob, read_raw).
  const FileReader& file = *file_;
  const uint64_t size = file.size();
  ADA_CHECK(size >= kHeaderLengthBytes,
            path << ": truncated: file has " << size
                 << " bytes, too short for the 8-byte header length of a safetensors file");
  char len_bytes[kHeaderLengthBytes];
  file.read(0, kHeaderLengthBytes, len_bytes);
  const uint64_t header_len = read_u64_le(len_bytes);
  ADA_CHECK(header_len <= size - kHeaderLengthBytes,
            path << ": truncated: header length says " << header_len << " bytes, file has "
                 << size - kHeaderLengthBytes << " after the length field");
  ADA_CHECK(header_len <= kMaxHeaderBytes,
            path << ": header length " << header_len << " exceeds the " << kMaxHeaderBytes
                 << "-byte limit (corrupt file?)");
  ADA_CHECK(header_len >= 2, path << ": header of " << header_len << " bytes cannot hold a JSON object");

  std::string header_text(size_t(header_len), '\0');
  file.read(kHeaderLengthBytes, header_len, &header_text[0]);
  Json header;
  try {
    header = Json::parse(header_text);
  } catch (const Json::exception& e) {
    ADA_FAIL(path << ": corrupt header JSON: " << e.what());
  }
  ADA_CHECK(header.is_object(), path << ": header JSON must be an object, got " << header.type_name());

  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const Json& v = it.value();
    if (name == kMetadataKey) {
      if (v.is_null()) continue;  // what a writer with optional metadata may produce for "none"
      ADA_CHECK(v.is_object(), path << ": __metadata__ must be an object, got " << v.type_name());
      for (auto m = v.begin(); m != v.end(); ++m) {
        ADA_CHECK(m.value().is_string(), path << ": __metadata__ value for '" << m.key()
                                              << "' must be a string, got " << m.value().dump());
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    ADA_CHECK(v.is_object(), path << ": tensor '" << name << "': entry must be an object, got "
                                  << v.type_name());
    ADA_CHECK(v.contains("dtype") && v.contains("shape") && v.contains("data_offsets"),
              path << ": tensor '" << name << "': needs dtype, shape and data_offsets, got "
                   << v.dump());
    Entry e;
    e.name = name;
    const Json& dt = v["dtype"];
    ADA_CHECK(dt.is_string(), path << ": tensor '" << name << "': dtype must be a string, got " << dt.dump());
    ADA_CHECK(parse_dtype(dt.get<std::string>(), e.dtype),
              path << ": tensor '" << name << "': unsupported dtype " << dt.dump()
                   << " (supported: F32, F64, I32, I64)");
    const Json& sh = v["shape"];
    ADA_CHECK(sh.is_array(), path << ": tensor '" << name << "': shape must be an array, got " << sh.dump());
    for (const Json& d : sh) {
      const uint64_t dim = json_uint(d, path, name, "shape");
      ADA_CHECK(dim <= uint64_t(std::numeric_limits<int64_t>::max()),
                path << ": tensor '" << name << "': shape dimension " << dim << " is too large");
      e.shape.push_back(int64_t(dim));
    }
    const Json& off = v["data_offsets"];
    ADA_CHECK(off.is_array() && off.size() == 2,
              path << ": tensor '" << name << "': data_offsets must be [begin, end], got " << off.dump());
    e.begin = json_uint(off[0], path, name, "data_offsets");
    e.end = json_uint(off[1], path, name, "data_offsets");
    ADA_CHECK(e.begin <= e.end, path << ": tensor '" << name << "': data_offsets [" << e.begin << ", "
                                     << e.end << "] end before they begin");
    int64_t numel = 0;
    const size_t esize = dtype_size(e.dtype);
    ADA_CHECK(checked_numel(e.shape, numel) &&
                  uint64_t(numel) <= std::numeric_limits<uint64_t>::max() / esize,
              path << ": tensor '" << name << "': shape " << shape_text(e.shape) << " is too large");
    const uint64_t need = uint64_t(numel) * esize;
    ADA_CHECK(e.end - e.begin == need,
              path << ": tensor '" << name << "': data_offsets [" << e.begin << ", " << e.end << "] hold "
                   << e.end - e.begin << " bytes but shape " << shape_text(e.shape) << " "
                   << dtype_name(e.dtype) << " needs " << need);
    entries.push_back(std::move(e));
  }

  const uint64_t data_start = kHeaderLengthBytes + header_len;
  const uint64_t data_size = size - data_start;
  uint64_t max_end = 0;
  for (const Entry& e : entries) max_end = std::max(max_end, e.end);
  ADA_CHECK(max_end <= data_size, path << ": truncated: header says " << max_end
                                       << " data bytes, file has " << data_size);
  // The tensors must tile the data region exactly: no overlap (two tensors sharing bytes), no gap
  // and nothing after the last one. Sorting by (begin, end) puts empty tensors before their neighbour.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  uint64_t cursor = 0;
  const Entry* prev = nullptr;
  for (const Entry* e : order) {
    ADA_CHECK(e->begin >= cursor, path << ": tensor '" << e->name << "' (bytes " << e->begin << ".."
                                       << e->end << ") overlaps tensor '" << prev->name << "' (bytes "
                                       << prev->begin << ".." << prev->end << ")");
    ADA_CHECK(e->begin == cursor, path << ": gap of " << e->begin - cursor << " bytes in the data before tensor '"
                                       << e->name << "' (offset " << e->begin << ")");
    cursor = e->end;
    prev = e;
  }
  ADA_CHECK(cursor == data_size, path << ": " << data_size - cursor
                                      << " trailing bytes after the last tensor (data region has "
                                      << data_size << " bytes, tensors cover " << cursor << ")");

  data_start_ = data_start;
  for (Entry& e : entries) tensors_.emplace(e.name, Info{e.dtype, std::move(e.shape), e.begin, e.end});
}

SafeTensorsFile::~SafeTensorsFile() = default;
SafeTensorsFile::SafeTensorsFile(SafeTensorsFile&&) noexcept = default;
SafeTensorsFile& SafeTensorsFile::operator=(SafeTensorsFile&&) noexcept = default;

const SafeTensorsFile::Info& SafeTensorsFile::info(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) tensor_not_found(name, tensors_);
  return it->second;
}

std::vector<std::string> SafeTensorsFile::names() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

void SafeTensorsFile::read_raw(const std::string& name, void* dst) const {
  const Info& t = info(name);
  file_->read(data_start_ + t.begin, t.end - t.begin, dst);
}

TensorBlob SafeTensorsFile::blob(const std::string& name) const {
  const Info& t = info(name);
  TensorBlob b;
  b.dtype = t.dtype;
  b.shape = t.shape;
  b.data.resize(size_t(t.end - t.begin));
  read_raw(name, b.data.data());
  return b;
}

SafeTensors read_safetensors(const std::string& path) {
  // each tensor's bytes go straight from the file into its blob (a 1M-item checkpoint is 260 MB:
  // a copy of the whole file first cost as much again)
  const SafeTensorsFile file(path);
  SafeTensors st;
  st.metadata = file.metadata();
  for (const std::string& name : file.names()) st.tensors.emplace(name, file.blob(name));
  return st;
}

TensorView view_of(const TensorBlob& b) { return {b.dtype, b.shape, b.data.data(), b.data.size()}; }

TensorView view_f32(const std::vector<int64_t>& shape, const float* values) {
  int64_t numel = 1;
  for (int64_t d : shape) numel *= d;
  return {DType::kF32, shape, values, size_t(std::max<int64_t>(numel, 0)) * sizeof(float)};
}

void write_safetensors(const std::string& path, const SafeTensors& st) {
  std::map<std::string, TensorView> views;
  for (const auto& kv : st.tensors) views.emplace(kv.first, view_of(kv.second));
  write_safetensors(path, views, st.metadata);
}

void write_safetensors(const std::string& path, const std::map<std::string, TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  Json header = Json::object();
  uint64_t offset = 0;
  // std::map iterates in byte-wise name order, which is the documented layout.
  for (const auto& kv : tensors) {
    const std::string& name = kv.first;
    const TensorView& b = kv.second;
    ADA_CHECK(!name.empty(), path << ": cannot write a tensor with an empty name");
    ADA_CHECK(name != kMetadataKey, path << ": '" << kMetadataKey << "' is reserved and cannot name a tensor");
    int64_t numel = 0;
    ADA_CHECK(checked_numel(b.shape, numel),
              path << ": tensor '" << name << "' has an invalid shape " << shape_text(b.shape));
    const uint64_t need = uint64_t(numel) * dtype_size(b.dtype);
    ADA_CHECK(b.bytes == need, path << ": tensor '" << name << "' holds " << b.bytes
                                          << " bytes but shape " << shape_text(b.shape) << " "
                                          << dtype_name(b.dtype) << " needs " << need);
    Json entry = Json::object();
    entry["dtype"] = dtype_name(b.dtype);
    entry["shape"] = b.shape;
    entry["data_offsets"] = {offset, offset + need};
    header[name] = std::move(entry);
    offset += need;
  }
  // Readers treat an empty __metadata__ as noise; write it only when there is something to say.
  if (!metadata.empty()) header[kMetadataKey] = metadata;

  std::string text;
  try {
    text = header.dump();
  } catch (const Json::exception& e) {
    // e.g. a tensor name or metadata string that is not valid UTF-8
    ADA_FAIL(path << ": cannot encode the header: " << e.what());
  }
  // Pad with spaces (valid JSON whitespace) so the data starts 8-byte aligned, as safetensors does.
  while ((kHeaderLengthBytes + text.size()) % 8 != 0) text.push_back(' ');

  // written as pieces: the length, the header, each tensor's bytes (no copy of the whole file)
  const uint64_t header_len = text.size();
  std::vector<ByteSpan> parts{{&header_len, kHeaderLengthBytes}, {text.data(), text.size()}};
  for (const auto& kv : tensors) parts.push_back({kv.second.data, kv.second.bytes});
  write_file_atomic(path, parts);
}

}  // namespace ada
