// A connection's input: bytes received and not yet answered, read into in place.
//
// Why not std::string: a 100,000-service `apply` is one 109 MB request line. Appending a
// socket's reads to a string copied every byte once from the read buffer and again on each
// doubling, into freshly faulted pages (about 1 s on the 2-vCPU VM, control_publish_bench
// --surface-apply-only). Here the socket reads straight into the spare room at the end,
// and the block grows through realloc, which glibc serves for large blocks (mmap'd, above
// its mmap threshold) with mremap: the pages move, nothing is copied or faulted again.
// The spare room after the bytes is readable memory of the block, which the JSON parser
// uses as its padding (document_tape.h) to read the text where it lies.
#pragma once

#include <cstddef>
#include <cstdlib>
#include <cstring>
#include <new>
#include <string_view>
#include <utility>

namespace meshlane {

class line_buffer {
 public:
  line_buffer() = default;
  line_buffer(const char* bytes, size_t length) { append(bytes, length); }
  line_buffer(const line_buffer&) = delete;
  line_buffer& operator=(const line_buffer&) = delete;
  line_buffer(line_buffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)),
        capacity_(std::exchange(other.capacity_, 0)) {}
  line_buffer& operator=(line_buffer&& other) noexcept {
    if (this != &other) {
      std::free(data_);
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
      capacity_ = std::exchange(other.capacity_, 0);
    }
    return *this;
  }
  ~line_buffer() { std::free(data_); }

  const char* data() const { return data_; }
  size_t size() const { return size_; }
  size_t capacity() const { return capacity_; }
  bool empty() const { return size_ == 0; }
  std::string_view view() const { return {data_, size_}; }
  // Bytes after the end that may be read (not written by this buffer's user): the block's
  // spare room.
  size_t readable_after() const { return capacity_ - size_; }

  // Room for at least `room` bytes after the end, to write into and then commit().
  char* reserve_tail(size_t room) {
    if (capacity_ - size_ < room) grow(size_ + room);
    return data_ + size_;
  }
  // The first `length` bytes written at reserve_tail() are now part of the buffer.
  void commit(size_t length) { size_ += length; }
  void append(const char* bytes, size_t length) {
    if (length == 0) return;
    std::memcpy(reserve_tail(length), bytes, length);
    size_ += length;
  }

  // Offset of the first `byte` at or after `from`, or npos.
  size_t find(char byte, size_t from) const {
    if (from >= size_) return std::string_view::npos;
    const void* at = std::memchr(data_ + from, byte, size_ - from);
    return at ? static_cast<size_t>(static_cast<const char*>(at) - data_) : std::string_view::npos;
  }
  // Drops the first `length` bytes.
  void erase_front(size_t length) {
    if (length >= size_) {
      size_ = 0;
      return;
    }
    std::memmove(data_, data_ + length, size_ - length);
    size_ -= length;
  }
  void truncate(size_t length) {
    if (length < size_) size_ = length;
  }
  void clear() { size_ = 0; }
  // Splits at `at`: returns the bytes [at, size()) as a buffer of their own (copied: the
  // short rest after a long line) and keeps [0, at) here, block and spare room included.
  line_buffer split_off(size_t at) {
    line_buffer rest;
    if (at < size_) rest.append(data_ + at, size_ - at);
    truncate(at);
    return rest;
  }

 private:
  void grow(size_t needed) {
    size_t capacity = capacity_ ? capacity_ : 4096;
    while (capacity < needed) capacity *= 2;
    void* block = std::realloc(data_, capacity);
    if (!block) throw std::bad_alloc();
    data_ = static_cast<char*>(block);
    capacity_ = capacity;
  }

  char* data_ = nullptr;
  size_t size_ = 0;
  size_t capacity_ = 0;
};

}  // namespace meshlane
