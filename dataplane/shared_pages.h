// Arrays of the forwarding view (forwarding_tables) that a delta of endpoints changes in
// a few places only: the IPv4 backend gate, the backends' counter slots and the
// frontends-by-backend index. Their elements live in fixed-size pages shared between the
// view being built and the installed one (copy on write), so that building the next view
// copies one pointer per page and then the pages the delta touches, instead of tens of
// megabytes at 100,000 services of 16 backends (issue 14: one backend changed in such a
// cluster is published in a few milliseconds, the data plane's sinks included).
//
// A published view is const and only ever loses holders, so a page whose reference count
// is 1 belongs to the view being built alone (the one thread that builds views), and only
// such a page is written; readers never see a page change (DESIGN.md, "Tables").
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

namespace meshlane {

// An array of `T` in pages of 2^kPageShift elements. Reading element i is two dependent
// loads (the page's address, then the element): the page table of a 4-million-slot gate
// is 8 KiB at the default shift, and stays in the cache of a worker that reads it often.
template <typename T, unsigned kPageShift = 12>
class paged_array {
 public:
  static constexpr size_t kPageSize = size_t{1} << kPageShift;
  static constexpr size_t kPageMask = kPageSize - 1;

  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  [[gnu::always_inline]] const T& operator[](size_t i) const { return page_data_[i >> kPageShift][i & kPageMask]; }

  // `n` copies of `value`, in pages of this array's own.
  void assign(size_t n, const T& value) {
    pages_.clear();
    page_data_.clear();
    size_ = 0;
    resize(n, value);
  }
  // Grows (new elements `value`) or shrinks; pages past the end are let go.
  void resize(size_t n, const T& value = T{}) {
    const size_t pages = (n + kPageMask) >> kPageShift;
    if (n < size_) {
      pages_.resize(pages);
      page_data_.resize(pages);
      size_ = n;
      return;
    }
    if (size_ & kPageMask) {  // the last page's tail, up to n
      T* last = own(pages_.size() - 1);
      std::fill(last + (size_ & kPageMask), last + std::min(kPageSize, (size_ & kPageMask) + (n - size_)), value);
    }
    while (pages_.size() < pages) {
      std::shared_ptr<T[]> page(new T[kPageSize]);
      std::fill(page.get(), page.get() + kPageSize, value);
      page_data_.push_back(page.get());
      pages_.push_back(std::move(page));
    }
    size_ = n;
  }
  // Element i for writing, while the view that holds this array is being built: its
  // page is copied first when another array shares it.
  T& mutable_at(size_t i) { return own(i >> kPageShift)[i & kPageMask]; }

  // How many pages this array shares with `other`, page for page (tests, benchmarks).
  size_t pages_shared_with(const paged_array& other) const {
    size_t n = 0;
    for (size_t p = 0; p < pages_.size() && p < other.pages_.size(); ++p) n += pages_[p] == other.pages_[p];
    return n;
  }
  size_t page_count() const { return pages_.size(); }

 private:
  T* own(size_t page) {
    if (pages_[page].use_count() > 1) {
      std::shared_ptr<T[]> copy(new T[kPageSize]);
      std::copy(pages_[page].get(), pages_[page].get() + kPageSize, copy.get());
      page_data_[page] = copy.get();
      pages_[page] = std::move(copy);
    }
    return page_data_[page];
  }

  std::vector<std::shared_ptr<T[]>> pages_;
  std::vector<T*> page_data_;  // pages_[p].get(): what readers load
  size_t size_ = 0;
};

// A sorted sequence of `T` (ordered by `Before`, a strict weak order; equal elements
// allowed) in pages of at most 2 x kPageTarget elements, each page shared between
// generations: `patch` takes some elements out and puts others in, copying only the
// pages they fall in (and the page directory, one entry per page).
template <typename T, typename Before, size_t kPageTarget = 1024>
class paged_sorted {
  using page = std::vector<T>;

 public:
  size_t size() const { return size_; }
  bool empty() const { return size_ == 0; }

  // From elements already sorted by Before.
  void assign_sorted(std::vector<T>&& sorted) {
    pages_.clear();
    firsts_.clear();
    size_ = sorted.size();
    for (size_t at = 0; at < sorted.size(); at += kPageTarget) {
      const size_t end = std::min(sorted.size(), at + kPageTarget);
      add_page(std::make_shared<const page>(sorted.begin() + at, sorted.begin() + end));
    }
    sorted.clear();
  }

  // Takes `gone` out (a sub-multiset of the elements, sorted by Before) and puts `added`
  // in (sorted by Before). Pages that neither loses nor gains an element stay shared with
  // the arrays this one was copied from.
  void patch(const std::vector<T>& gone, const std::vector<T>& added) {
    if (pages_.empty()) {
      assign_sorted(std::vector<T>(added));
      return;
    }
    std::vector<std::shared_ptr<const page>> pages;
    pages.reserve(pages_.size() + 1);
    auto next_gone = gone.begin();
    auto next_added = added.begin();
    for (size_t p = 0; p < pages_.size(); ++p) {
      // An added element goes into the last page whose first is not above it (the first
      // page takes the smallest); a gone one is taken out where the walk through the
      // elements in order first meets an equal one, which may be a page before the one
      // an equal added element would go to.
      const bool last = p + 1 == pages_.size();
      const auto added_end =
          std::find_if(next_added, added.end(), [&](const T& e) { return !last && !Before{}(e, firsts_[p + 1]); });
      const bool loses = next_gone != gone.end() && !Before{}(pages_[p]->back(), *next_gone);
      if (!loses && next_added == added_end) {
        pages.push_back(pages_[p]);
        continue;
      }
      page merged;
      merged.reserve(pages_[p]->size() + (added_end - next_added));
      for (const T& e : *pages_[p]) {
        if (next_gone != gone.end() && same(*next_gone, e)) {
          ++next_gone;
          continue;
        }
        while (next_added != added_end && Before{}(*next_added, e)) merged.push_back(*next_added++);
        merged.push_back(e);
      }
      merged.insert(merged.end(), next_added, added_end);
      next_added = added_end;
      for (size_t at = 0; at < merged.size();) {  // split when it grew; dropped when emptied
        const size_t end = merged.size() - at < 2 * kPageTarget ? merged.size() : at + kPageTarget;
        pages.push_back(std::make_shared<const page>(merged.begin() + at, merged.begin() + end));
        at = end;
      }
    }
    size_ = size_ - static_cast<size_t>(next_gone - gone.begin()) + added.size();
    pages_.clear();
    firsts_.clear();
    for (auto& p : pages) add_page(std::move(p));
  }

  // Calls `fn(element)` for each element equivalent to `probe` under `Less` (a coarser
  // order than Before, that Before refines), in order, until fn returns false.
  template <typename Less, typename Fn>
  void for_each_equal(const T& probe, Less less, Fn fn) const {
    if (pages_.empty()) return;
    // The first page whose first element is not below the probe; equal elements may start
    // in the page before it.
    size_t p = static_cast<size_t>(std::lower_bound(firsts_.begin(), firsts_.end(), probe, less) - firsts_.begin());
    if (p > 0) --p;
    for (; p < pages_.size(); ++p) {
      const page& elements = *pages_[p];
      for (auto it = std::lower_bound(elements.begin(), elements.end(), probe, less); it != elements.end(); ++it) {
        if (less(probe, *it)) return;
        if (!fn(*it)) return;
      }
    }
  }
  template <typename Less>
  bool contains(const T& probe, Less less) const {
    bool found = false;
    for_each_equal(probe, less, [&](const T&) { return !(found = true); });
    return found;
  }

  // Every element in order (tests).
  std::vector<T> flatten() const {
    std::vector<T> all;
    all.reserve(size_);
    for (const auto& p : pages_) all.insert(all.end(), p->begin(), p->end());
    return all;
  }
  size_t pages_shared_with(const paged_sorted& other) const {
    size_t n = 0;
    for (const auto& p : pages_) n += std::find(other.pages_.begin(), other.pages_.end(), p) != other.pages_.end();
    return n;
  }
  size_t page_count() const { return pages_.size(); }

 private:
  static bool same(const T& a, const T& b) { return !Before{}(a, b) && !Before{}(b, a); }
  void add_page(std::shared_ptr<const page> p) {
    if (p->empty()) return;
    firsts_.push_back(p->front());
    pages_.push_back(std::move(p));
  }

  std::vector<std::shared_ptr<const page>> pages_;  // non-empty, in order
  std::vector<T> firsts_;                           // each page's first element
  size_t size_ = 0;
};

}  // namespace meshlane
