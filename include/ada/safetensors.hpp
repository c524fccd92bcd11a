// safetensors files: 8-byte little-endian header length N, N bytes of JSON header
// {"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {str: str}},
// then the raw little-endian data. Same format PyTorch's safetensors writes, so weights move both ways.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace ada {

class FileReader;  // fileio.hpp

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

// A safetensors file opened for reading one tensor at a time: the constructor reads and validates the
// header (every check of read_safetensors, the same errors) and no tensor data; blob() and read_raw()
// read a tensor's bytes when asked, so a large tensor can go straight into the memory that keeps it.
class SafeTensorsFile {
 public:
  explicit SafeTensorsFile(const std::string& path);
  ~SafeTensorsFile();
  SafeTensorsFile(SafeTensorsFile&&) noexcept;
  SafeTensorsFile& operator=(SafeTensorsFile&&) noexcept;
  const std::string& path() const { return path_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool has(const std::string& name) const { return tensors_.count(name) != 0; }
  std::vector<std::string> names() const;  // in name order
  // A tensor's dtype and shape (throw naming a missing tensor).
  DType dtype(const std::string& name) const { return info(name).dtype; }
  const std::vector<int64_t>& shape(const std::string& name) const { return info(name).shape; }
  TensorBlob blob(const std::string& name) const;
  // Its raw bytes (numel * dtype size) into dst.
  void read_raw(const std::string& name, void* dst) const;

 private:
  struct Info {
    DType dtype;
    std::vector<int64_t> shape;
    uint64_t begin, end;  // offsets in the data region
  };
  const Info& info(const std::string& name) const;
  std::string path_;
  std::unique_ptr<FileReader> file_;
  std::map<std::string, Info> tensors_;
  std::map<std::string, std::string> metadata_;
  uint64_t data_start_ = 0;
};

// A tensor's bytes where they already are (not owned; numel * dtype size of them): what a writer
// needs, so that parameters or optimizer moments go into a file without a copy.
struct TensorView {
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;
  const void* data = nullptr;
  size_t bytes = 0;
};
TensorView view_of(const TensorBlob& b);
TensorView view_f32(const std::vector<int64_t>& shape, const float* values);  // numel floats at values

// Validates everything: file too short, header length beyond the file, JSON syntax, unknown dtype,
// offsets out of order / overlapping / beyond the data / not matching shape*dtype size, trailing bytes.
// Errors name the file and what is wrong.
SafeTensors read_safetensors(const std::string& path);
// Written atomically (fileio.hpp). Tensors in name order, data 8-byte aligned. The views' bytes are
// written where they are, with no whole-file or per-tensor copy.
void write_safetensors(const std::string& path, const SafeTensors& st);
void write_safetensors(const std::string& path, const std::map<std::string, TensorView>& tensors,
                       const std::map<std::string, std::string>& metadata);

}  // namespace ada
