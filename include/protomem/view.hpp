// Non-owning views of the caller's buffers: a step reads embeddings and labels in place and writes
// the gradient into the caller's buffer. Nothing here allocates or copies.
#pragma once

#include <protomem/detail/language.hpp>

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace protomem {

using index_t = std::int64_t;  ///< sizes and indices (signed, as Eigen and LibTorch use)
using label_t = std::int64_t;  ///< class labels; a valid label is >= 0

/// A contiguous run of `size` values.
template <class T>
struct Span {
  T* data = nullptr;
  index_t size = 0;

  T* begin() const { return data; }
  T* end() const { return data + size; }
  T& operator[](index_t i) const { return data[i]; }
};

/// A row-major matrix view: element (i, j) lives at data[i * row_stride + j], row_stride >= cols.
template <class T>
struct MatrixView {
  T* data = nullptr;
  index_t rows = 0;
  index_t cols = 0;
  index_t row_stride = 0;

  T& operator()(index_t i, index_t j) const { return data[i * row_stride + j]; }
  T* row(index_t i) const { return data + i * row_stride; }
  /// A mutable view converts to a read-only one.
  template <class U, class = std::enable_if_t<std::is_same_v<U, const T> && !std::is_const_v<T>>>
  operator MatrixView<U>() const {
    return {data, rows, cols, row_stride};
  }
};

/// View `rows` x `cols` values at `data`; row_stride defaults to cols (densely packed rows).
template <class T>
MatrixView<T> matrix_view(T* data, index_t rows, index_t cols, index_t row_stride = -1) {
  return {data, rows, cols, row_stride < 0 ? cols : row_stride};
}

/// The labels of a batch: `size` values at `data`.
using LabelView = Span<const label_t>;

inline LabelView label_view(const label_t* data, index_t size) { return {data, size}; }

}  // namespace protomem
