// An op's dependency list (Op::deps): the op ids it waits for, with room for a few of them inside the op itself.
// Nearly every op has at most kInline deps; with std::vector each non-empty list was a heap allocation at lowering
// and a free when the schedule was dropped (tens of thousands per sweep point). Same size as a std::vector; a
// vector-like subset of its interface (what the IR's readers and writers use: iteration, indexing, push_back,
// insert and erase ranges).
#pragma once

#include <algorithm>
#include <cstdint>
#include <initializer_list>
#include <iterator>
#include <vector>

namespace twinstep::schedule {

class DepList {
 public:
  using value_type = std::uint32_t;
  using iterator = value_type*;
  using const_iterator = const value_type*;
  using size_type = std::size_t;
  static constexpr std::uint32_t kInline = 4;  ///< Deps held in place (no allocation).

  DepList() noexcept {}  // NOLINT(modernize-use-equals-default): the union's member is left unset
  DepList(std::initializer_list<value_type> l) { assign(l.begin(), l.end()); }
  DepList(const std::vector<value_type>& v) { assign(v.data(), v.data() + v.size()); }  // implicit: ids are deps
  DepList(const DepList& o) { assign(o.begin(), o.end()); }
  DepList(DepList&& o) noexcept { take(o); }
  DepList& operator=(const DepList& o) {
    if (this != &o) {
      size_ = 0;
      assign(o.begin(), o.end());
    }
    return *this;
  }
  DepList& operator=(DepList&& o) noexcept {
    if (this != &o) {
      release();
      take(o);
    }
    return *this;
  }
  ~DepList() { release(); }

  [[nodiscard]] size_type size() const { return size_; }
  [[nodiscard]] bool empty() const { return size_ == 0; }
  [[nodiscard]] value_type* data() { return cap_ > kInline ? heap_ : inline_; }
  [[nodiscard]] const value_type* data() const { return cap_ > kInline ? heap_ : inline_; }
  [[nodiscard]] iterator begin() { return data(); }
  [[nodiscard]] iterator end() { return data() + size_; }
  [[nodiscard]] const_iterator begin() const { return data(); }
  [[nodiscard]] const_iterator end() const { return data() + size_; }
  value_type& operator[](size_type i) { return data()[i]; }
  const value_type& operator[](size_type i) const { return data()[i]; }
  value_type& front() { return data()[0]; }
  [[nodiscard]] const value_type& front() const { return data()[0]; }
  value_type& back() { return data()[size_ - 1]; }
  [[nodiscard]] const value_type& back() const { return data()[size_ - 1]; }

  void clear() { size_ = 0; }
  void reserve(size_type n) {
    if (n > cap_) grow(static_cast<std::uint32_t>(n));
  }
  void push_back(value_type v) {
    if (size_ == cap_) grow(cap_ * 2);
    data()[size_++] = v;
  }
  void pop_back() { --size_; }
  /// Inserts [first, last) (not from this list) before `pos`.
  template <typename It>
  iterator insert(const_iterator pos, It first, It last) {
    const auto at = static_cast<std::uint32_t>(pos - begin());
    const auto n = static_cast<std::uint32_t>(std::distance(first, last));
    if (size_ + n > cap_) grow(std::max(size_ + n, cap_ * 2));
    value_type* d = data();
    for (std::uint32_t i = size_; i > at; --i) d[i - 1 + n] = d[i - 1];  // plain loops: a few deps
    for (std::uint32_t i = at; first != last; ++first, ++i) d[i] = *first;
    size_ += n;
    return d + at;
  }
  iterator erase(const_iterator first, const_iterator last) {
    value_type* d = data();
    const auto a = static_cast<std::uint32_t>(first - d);
    const auto b = static_cast<std::uint32_t>(last - d);
    for (std::uint32_t i = b; i < size_; ++i) d[a + i - b] = d[i];
    size_ -= b - a;
    return d + a;
  }

  friend bool operator==(const DepList& a, const DepList& b) {
    return a.size_ == b.size_ && std::equal(a.begin(), a.end(), b.begin());
  }
  friend bool operator==(const DepList& a, const std::vector<value_type>& b) {
    return a.size_ == b.size() && std::equal(a.begin(), a.end(), b.begin());
  }

 private:
  void assign(const value_type* first, const value_type* last) {
    const auto n = static_cast<std::uint32_t>(last - first);
    if (n > cap_) grow(n);
    value_type* d = data();
    for (std::uint32_t i = 0; i < n; ++i) d[i] = first[i];
    size_ = n;
  }
  /// Room for at least `n` (> cap_) deps, keeping the current ones.
  void grow(std::uint32_t n) {
    n = std::max(n, 2 * kInline);
    auto* p = new value_type[n];
    const value_type* d = data();
    for (std::uint32_t i = 0; i < size_; ++i) p[i] = d[i];
    release();
    heap_ = p;
    cap_ = n;
  }
  void release() {
    if (cap_ > kInline) delete[] heap_;
    cap_ = kInline;
  }
  /// Takes `o`'s deps (its heap block, or a copy of its inline ones) and leaves it empty; this list holds nothing.
  void take(DepList& o) {
    size_ = o.size_;
    cap_ = o.cap_;
    if (o.cap_ > kInline) {
      heap_ = o.heap_;
    } else {
      for (std::uint32_t i = 0; i < o.size_; ++i) inline_[i] = o.inline_[i];
    }
    o.size_ = 0;
    o.cap_ = kInline;
  }

  union {
    value_type inline_[kInline];
    value_type* heap_;
  };
  std::uint32_t size_ = 0;
  std::uint32_t cap_ = kInline;  ///< kInline: the deps are in inline_; more: in heap_.
};

}  // namespace twinstep::schedule
