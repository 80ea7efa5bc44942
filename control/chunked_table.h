// A table of a snapshot whose rows live in fixed-size chunks shared between generations
// (structural sharing): copying the table copies one pointer per chunk, and changing a row
// copies only that row's chunk, and only when another generation still holds it. A delta
// that changes one of 100,000 services thus costs a chunk (256 rows), not the 100,000-row
// copy (10 ms, most of it reference counts scattered over the heap) a std::vector costs.
//
// Readers get what a const std::vector gives (size, [], iteration in order); rows are
// never changed in place once a snapshot is published, since the snapshot is const then,
// so no reader ever sees a half-written row (DESIGN.md "Tables").
#pragma once

#include <cstddef>
#include <iterator>
#include <memory>
#include <mutex>
#include <span>
#include <string>
#include <vector>

namespace meshlane {

template <typename T, size_t kChunkRows = 256>
class chunked_table {
  struct chunk {
    std::vector<T> rows;
    // A value computed once from the rows (chunk_memo), kept with them: the generations
    // that share the chunk share it. Not copied: a copy is made to be written.
    mutable std::mutex memo_mutex;
    mutable std::string memo;
    chunk() = default;
    chunk(const chunk& other) : rows(other.rows) {}
  };

 public:
  using value_type = T;
  using size_type = size_t;

  class const_iterator {
   public:
    using iterator_category = std::random_access_iterator_tag;
    using value_type = T;
    using difference_type = std::ptrdiff_t;
    using pointer = const T*;
    using reference = const T&;

    const_iterator() = default;
    const_iterator(const chunked_table* table, size_t index) : table_(table), index_(index) {}
    reference operator*() const { return (*table_)[index_]; }
    pointer operator->() const { return &(*table_)[index_]; }
    reference operator[](difference_type n) const { return (*table_)[index_ + n]; }
    const_iterator& operator++() { ++index_; return *this; }
    const_iterator operator++(int) { auto old = *this; ++index_; return old; }
    const_iterator& operator--() { --index_; return *this; }
    const_iterator operator--(int) { auto old = *this; --index_; return old; }
    const_iterator& operator+=(difference_type n) { index_ += n; return *this; }
    const_iterator& operator-=(difference_type n) { index_ -= n; return *this; }
    friend const_iterator operator+(const_iterator i, difference_type n) { return i += n; }
    friend const_iterator operator+(difference_type n, const_iterator i) { return i += n; }
    friend const_iterator operator-(const_iterator i, difference_type n) { return i -= n; }
    friend difference_type operator-(const const_iterator& a, const const_iterator& b) {
      return static_cast<difference_type>(a.index_) - static_cast<difference_type>(b.index_);
    }
    friend bool operator==(const const_iterator& a, const const_iterator& b) { return a.index_ == b.index_; }
    friend auto operator<=>(const const_iterator& a, const const_iterator& b) { return a.index_ <=> b.index_; }
    size_t index() const { return index_; }

   private:
    const chunked_table* table_ = nullptr;
    size_t index_ = 0;
  };

  chunked_table() = default;
  // From rows built whole (a full compile).
  explicit chunked_table(std::vector<T>&& rows) { assign(std::move(rows)); }
  chunked_table& operator=(std::vector<T>&& rows) {
    assign(std::move(rows));
    return *this;
  }

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  const T& operator[](size_t i) const { return chunks_[i / kChunkRows]->rows[i % kChunkRows]; }
  const T& front() const { return (*this)[0]; }
  const T& back() const { return (*this)[size_ - 1]; }
  const_iterator begin() const { return {this, 0}; }
  const_iterator end() const { return {this, size_}; }

  // Row i for writing, while this table is being built (before its snapshot is
  // published): its chunk is copied first when another table shares it.
  T& mutable_at(size_t i) { return own(i / kChunkRows)->rows[i % kChunkRows]; }
  void push_back(T row) {
    if (size_ % kChunkRows == 0) {
      chunks_.push_back(std::make_shared<chunk>());
      chunks_.back()->rows.reserve(kChunkRows);
    }
    own(chunks_.size() - 1)->rows.push_back(std::move(row));
    ++size_;
  }
  void clear() {
    chunks_.clear();
    size_ = 0;
  }
  // The chunks: rows [c * kChunkRows, (c + 1) * kChunkRows) are chunk c, whatever way
  // the table was built, so two tables of the same rows are chunked alike.
  size_t chunk_count() const { return chunks_.size(); }
  // compute(rows of chunk c) -> std::string, computed at the first ask and kept with the
  // chunk (a published table's rows never change; a chunk written is a new chunk).
  template <typename F>
  std::string chunk_memo(size_t c, F&& compute) const {
    const chunk& k = *chunks_[c];
    std::lock_guard lock(k.memo_mutex);
    if (k.memo.empty()) k.memo = compute(std::span<const T>(k.rows));
    return k.memo;
  }
  // How many chunks this table shares with `other`, chunk for chunk (tests).
  size_t shared_chunks_with(const chunked_table& other) const {
    size_t n = 0;
    for (size_t c = 0; c < chunks_.size() && c < other.chunks_.size(); ++c) n += chunks_[c] == other.chunks_[c];
    return n;
  }

 private:
  void assign(std::vector<T>&& rows) {
    clear();
    chunks_.reserve((rows.size() + kChunkRows - 1) / kChunkRows);
    for (auto& row : rows) push_back(std::move(row));
    rows.clear();
  }
  // Nothing but tables being built (owned by one thread) copies a table, and a published
  // one only loses holders, so a count of 1 means no one else can see the chunk.
  const std::shared_ptr<chunk>& own(size_t c) {
    if (chunks_[c].use_count() > 1) chunks_[c] = std::make_shared<chunk>(*chunks_[c]);
    chunks_[c]->memo.clear();  // to be written: what was computed from the rows goes
    return chunks_[c];
  }

  std::vector<std::shared_ptr<chunk>> chunks_;
  size_t size_ = 0;
};

}  // namespace meshlane
