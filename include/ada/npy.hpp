// NumPy .npy files (format version 1.0) for float32 and int32 arrays in C order, so exported
// embeddings load with a plain `np.load("items.npy")` (and faiss, hnswlib, ... from there).
//
// Writing produces the bytes numpy.save writes: "\x93NUMPY", version 1.0, a little-endian uint16
// header length, the header dict `{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }` with
// numpy's spare space for growing the first axis, padded with spaces and ended by '\n' so that the
// data starts at a multiple of 64 bytes; then the raw little-endian values. Files are written
// atomically (fileio.hpp): an error never leaves a half-written file.
//
// Reading accepts versions 1.0, 2.0 and 3.0 with descr '<f4' or '<i4' and fortran_order False, and
// checks that the file holds exactly the bytes the shape needs. Every problem (not an .npy file,
// unsupported version, wrong dtype, Fortran order, malformed header, truncated data, trailing
// bytes) throws ada::Error naming the file and what is wrong.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace ada {

struct NpyArray {
  std::string descr;            // "<f4" or "<i4"
  std::vector<int64_t> shape;   // () for a scalar
  std::vector<float> f32;       // the values when descr == "<f4" (C order)
  std::vector<int32_t> i32;     // the values when descr == "<i4" (C order)
  int64_t numel() const;
};

// The bytes before the values: magic, version, length and the padded header dict, for dtype "<f4"
// or "<i4" (a writer can put the values after it from where they are).
std::string npy_header(const std::string& descr, const std::vector<int64_t>& shape);
// The whole file's bytes (header + data). shape () is a scalar (one value).
std::string npy_encode(const float* data, const std::vector<int64_t>& shape);
std::string npy_encode(const int32_t* data, const std::vector<int64_t>& shape);
// `name` is what errors call the bytes (usually the file's path).
NpyArray npy_decode(const std::string& bytes, const std::string& name);

// Atomic writes of npy_encode(...).
void write_npy(const std::string& path, const float* data, const std::vector<int64_t>& shape);
void write_npy(const std::string& path, const int32_t* data, const std::vector<int64_t>& shape);
NpyArray read_npy(const std::string& path);
// read_npy that also requires descr '<f4' (resp. '<i4'); throws naming the file and the dtype found.
NpyArray read_npy_f32(const std::string& path);
NpyArray read_npy_i32(const std::string& path);

}  // namespace ada
