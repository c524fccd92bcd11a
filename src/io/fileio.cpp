// Atomic file output and small file helpers (see fileio.hpp).
#include "ada/fileio.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <string>

#include "ada/check.hpp"

namespace ada {

namespace {

std::string errno_text(int err) { return std::strerror(err); }

// Folder that holds `path` ("." for a bare file name), so the temp file lands on the same
// file system as the target and rename() is atomic.
std::string parent_dir(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

// A name no other writer (thread or process) uses at the same moment: pid + per-process counter +
// clock bits. O_EXCL below still guards against a clash with a stale file.
std::string temp_name(const std::string& path) {
  static std::atomic<uint64_t> counter{0};
  const uint64_t n = counter.fetch_add(1);
  const auto now = std::chrono::steady_clock::now().time_since_epoch().count();
  return path + ".tmp." + std::to_string(::getpid()) + "." + std::to_string(n) + "." +
         std::to_string(static_cast<uint64_t>(now) & 0xffffff);
}

// Closes the descriptor and removes the temp file unless released: every error path below
// cleans up simply by throwing.
class TempFile {
 public:
  TempFile(int fd, std::string name) : fd_(fd), name_(std::move(name)) {}
  ~TempFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!name_.empty()) ::unlink(name_.c_str());
  }
  TempFile(const TempFile&) = delete;
  TempFile& operator=(const TempFile&) = delete;
  int fd() const { return fd_; }
  const std::string& name() const { return name_; }
  // close() can report a deferred write error (e.g. NFS, quota), so its result matters.
  int close_fd() {
    const int rc = ::close(fd_);
    fd_ = -1;
    return rc;
  }
  void release() { name_.clear(); }

 private:
  int fd_;
  std::string name_;
};

// Opens path for reading (a directory is an error); the caller closes the descriptor.
int open_for_reading(const std::string& path, struct stat& st) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    const int err = errno;
    ADA_FAIL(path << ": cannot open: " << errno_text(err));
  }
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    ADA_FAIL(path << ": cannot stat: " << errno_text(err));
  }
  if (S_ISDIR(st.st_mode)) {
    ::close(fd);
    ADA_FAIL(path << ": is a directory, not a file");
  }
  return fd;
}

// The rest of an open file's content, read until EOF rather than trusting st_size: pipes and /proc
// files report 0.
std::string read_all(int fd, const std::string& path, const struct stat& st) {
  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(size_t(st.st_size));
  char buf[1 << 16];
  for (;;) {
    const ssize_t r = ::read(fd, buf, sizeof buf);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ADA_FAIL(path << ": read failed: " << errno_text(err));
    }
    if (r == 0) break;
    out.append(buf, size_t(r));
  }
  return out;
}

struct Closer {
  int fd;
  ~Closer() { ::close(fd); }
};

}  // namespace

void write_file_atomic(const std::string& path, const std::string& bytes) {
  write_file_atomic(path, std::vector<ByteSpan>{ByteSpan{bytes.data(), bytes.size()}});
}

void write_file_atomic(const std::string& path, const std::vector<ByteSpan>& parts) {
  ADA_CHECK(!path.empty(), "write_file_atomic: empty path");
  int fd = -1;
  std::string tmp;
  for (int attempt = 0; attempt < 100; ++attempt) {
    tmp = temp_name(path);
    // 0666 so the final file gets the usual umask-derived permissions (mkstemp would give 0600).
    fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd >= 0 || errno != EEXIST) break;
  }
  if (fd < 0) {
    const int err = errno;
    ADA_FAIL(path << ": cannot create temporary file " << tmp << ": " << errno_text(err));
  }
  TempFile file(fd, tmp);

  for (const ByteSpan& part : parts) {
    const char* p = static_cast<const char*>(part.data);
    size_t left = part.size;
    while (left > 0) {
      const ssize_t w = ::write(file.fd(), p, left);
      if (w < 0) {
        if (errno == EINTR) continue;
        const int err = errno;
        ADA_FAIL(path << ": write failed: " << errno_text(err));
      }
      p += w;
      left -= size_t(w);
    }
  }
  // Data must be on disk before the rename makes it visible, or a crash could leave an empty file
  // under the final name.
  if (::fsync(file.fd()) != 0) {
    const int err = errno;
    ADA_FAIL(path << ": fsync failed: " << errno_text(err));
  }
  if (file.close_fd() != 0) {
    const int err = errno;
    ADA_FAIL(path << ": close failed: " << errno_text(err));
  }
  if (::rename(file.name().c_str(), path.c_str()) != 0) {
    const int err = errno;
    ADA_FAIL(path << ": cannot rename temporary file into place: " << errno_text(err));
  }
  file.release();
  // Persist the directory entry too; best effort, since some file systems refuse fsync on folders.
  const int dfd = ::open(parent_dir(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

std::string read_file(const std::string& path) {
  struct stat st {};
  const Closer file{open_for_reading(path, st)};
  return read_all(file.fd, path, st);
}

FileReader::FileReader(const std::string& path) : path_(path) {
  struct stat st {};
  const int fd = open_for_reading(path, st);
  if (S_ISREG(st.st_mode)) {
    fd_ = fd;
    size_ = uint64_t(st.st_size);
  } else {  // read from this descriptor: a pipe opened twice would lose what its writer sent the first
    const Closer file{fd};
    whole_ = read_all(fd, path, st);
    size_ = whole_.size();
  }
}

FileReader::~FileReader() {
  if (fd_ >= 0) ::close(fd_);
}

void FileReader::read(uint64_t offset, uint64_t n, void* dst) const {
  ADA_CHECK(offset <= size_ && n <= size_ - offset,
            path_ << ": truncated: bytes " << offset << ".." << offset + n << " wanted, file has " << size_);
  char* out = static_cast<char*>(dst);
  if (fd_ < 0) {
    if (n) std::memcpy(out, whole_.data() + offset, size_t(n));
    return;
  }
  uint64_t done = 0;
  while (done < n) {
    const size_t chunk = size_t(std::min<uint64_t>(n - done, 1ull << 30));
    const ssize_t r = ::pread(fd_, out + done, chunk, off_t(offset + done));
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ADA_FAIL(path_ << ": read failed: " << errno_text(err));
    }
    ADA_CHECK(r > 0, path_ << ": truncated while reading: the file ended at byte " << offset + done << " of the "
                           << size_ << " it had when opened");
    done += uint64_t(r);
  }
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void make_dirs(const std::string& path) {
  ADA_CHECK(!path.empty(), "make_dirs: empty path");
  // Walk the prefixes ("a", "a/b", "a/b/c") and create each one that is missing.
  size_t pos = 0;
  for (;;) {
    pos = path.find('/', pos + 1);
    const std::string prefix = path.substr(0, pos);
    if (!prefix.empty() && prefix != "/") {
      if (::mkdir(prefix.c_str(), 0777) != 0) {
        const int err = errno;
        struct stat st {};
        // EEXIST is fine for a folder; also tolerate EACCES etc. on an existing parent like /home.
        if (::stat(prefix.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
          if (err == EEXIST)
            ADA_FAIL(path << ": cannot create directory: " << prefix << " exists and is not a directory");
          ADA_FAIL(path << ": cannot create directory " << prefix << ": " << errno_text(err));
        }
      }
    }
    if (pos == std::string::npos) break;
  }
}

}  // namespace ada
