// safetensors files: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian data. Same format PyTorch's safetensors writes, so weights move both ways.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace ada {

enum class DType { kF32, kF64, kI32, kI64 };

struct TensorBlob {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  std::vector<uint8_t> data;  // raw little-endian bytes, numel * dtype size
  int64_t numel() const;
  // Values converted to float / int64 (throws for a dtype that cannot convert exactly... F64 -> F32 allowed).
  std::vector<float> to_f32() const;
  std::vector<double> to_f64() const;
  std::vector<int64_t> to_i64() const;
};

TensorBlob make_blob(const std::vector<int64_t>& shape, const float* values);
TensorBlob make_blob(const std::vector<int64_t>& shape, const double* values);
TensorBlob make_blob(const std::vector<int64_t>& shape, const int32_t* values);
TensorBlob make_blob(const std::vector<int64_t>& shape, const int64_t* values);

struct SafeTensors {
  std::map<std::string, TensorBlob> tensors;
  std::map<std::string, std::string> metadata;
  const TensorBlob& at(const std::string& name) const;  // throws naming the missing tensor
  bool has(const std::string& name) const { return tensors.count(name) != 0; }
};

// Validates everything: file too short, header length beyond the file, JSON syntax, unknown dtype,
// offsets out of order / overlapping / beyond the data / not matching shape*dtype size, trailing bytes.
// Errors name the file and what is wrong.
SafeTensors read_safetensors(const std::string& path);
// Written atomically (fileio.hpp). Tensors in name order, data 8-byte aligned.
void write_safetensors(const std::string& path, const SafeTensors& st);

}  // namespace ada
