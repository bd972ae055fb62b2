// Owning handles for the CUDA backend: device arrays, grow-only stream-ordered scratch, pinned host
// staging, events, a cuBLAS handle, and scope guards for the current device and a borrowed cuBLAS
// handle's state. All move-only; destructors never throw.
#pragma once

#include <cstddef>
#include <utility>

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <protomem/backend/cuda/check.cuh>

namespace protomem::detail {

/// `count` values of T in device memory from cudaMalloc, owned.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(std::size_t count) {
    if (count > 0) {
      cuda_check(cudaMalloc(reinterpret_cast<void**>(&data_), count * sizeof(T)), "cudaMalloc");
    }
    size_ = count;
  }
  DeviceArray(DeviceArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  DeviceArray& operator=(DeviceArray&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  ~DeviceArray() { release(); }

  T* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) cudaFree(data_);  // implicitly waits for work that uses it
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// Device scratch that only grows, allocated stream-ordered (cudaMallocAsync, CUDA's memory pool),
/// so that growing it never synchronises the host.
class ScratchBuffer {
 public:
  ScratchBuffer() = default;
  ScratchBuffer(ScratchBuffer&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), bytes_(std::exchange(other.bytes_, 0)) {}
  ScratchBuffer& operator=(ScratchBuffer&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      bytes_ = std::exchange(other.bytes_, 0);
    }
    return *this;
  }
  ScratchBuffer(const ScratchBuffer&) = delete;
  ScratchBuffer& operator=(const ScratchBuffer&) = delete;
  ~ScratchBuffer() { release(); }

  /// At least `bytes` bytes; the old contents are not kept. Work already issued on `stream` that
  /// uses the old buffer finishes before it is freed.
  void reserve(std::size_t bytes, cudaStream_t stream) {
    if (bytes <= bytes_) return;
    void* fresh = nullptr;
    cuda_check(cudaMallocAsync(&fresh, bytes, stream), "cudaMallocAsync (scratch)");
    if (data_ != nullptr) cudaFreeAsync(data_, stream);
    data_ = fresh;
    bytes_ = bytes;
  }
  void* data() const { return data_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) cudaFree(data_);  // cudaFree accepts cudaMallocAsync memory and waits
    data_ = nullptr;
    bytes_ = 0;
  }
  void* data_ = nullptr;
  std::size_t bytes_ = 0;
};

/// Page-locked host memory for asynchronous copies; grows only.
template <class T>
class PinnedArray {
 public:
  PinnedArray() = default;
  PinnedArray(PinnedArray&& other) noexcept
      : data_(std::exchange(other.data_, nullptr)), size_(std::exchange(other.size_, 0)) {}
  PinnedArray& operator=(PinnedArray&& other) noexcept {
    if (this != &other) {
      release();
      data_ = std::exchange(other.data_, nullptr);
      size_ = std::exchange(other.size_, 0);
    }
    return *this;
  }
  PinnedArray(const PinnedArray&) = delete;
  PinnedArray& operator=(const PinnedArray&) = delete;
  ~PinnedArray() { release(); }

  /// Room for at least `count` values; the old contents are not kept. The caller makes sure no copy
  /// from or to the old buffer is in flight.
  void reserve(std::size_t count) {
    if (count <= size_) return;
    T* fresh = nullptr;
    cuda_check(cudaMallocHost(reinterpret_cast<void**>(&fresh), count * sizeof(T)),
               "cudaMallocHost");
    release();
    data_ = fresh;
    size_ = count;
  }
  T* data() const { return data_; }
  std::size_t size() const { return size_; }

 private:
  void release() noexcept {
    if (data_ != nullptr) cudaFreeHost(data_);
    data_ = nullptr;
    size_ = 0;
  }
  T* data_ = nullptr;
  std::size_t size_ = 0;
};

/// A CUDA event without timing, owned.
class Event {
 public:
  Event() {
    cuda_check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreate");
  }
  Event(Event&& other) noexcept : event_(std::exchange(other.event_, nullptr)) {}
  Event& operator=(Event&& other) noexcept {
    if (this != &other) {
      if (event_ != nullptr) cudaEventDestroy(event_);
      event_ = std::exchange(other.event_, nullptr);
    }
    return *this;
  }
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  ~Event() {
    if (event_ != nullptr) cudaEventDestroy(event_);
  }
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

/// A cuBLAS handle the memory created, owned.
class OwnedCublas {
 public:
  OwnedCublas() = default;
  static OwnedCublas create() {
    OwnedCublas owned;
    cublas_check(cublasCreate(&owned.handle_), "cublasCreate");
    return owned;
  }
  OwnedCublas(OwnedCublas&& other) noexcept : handle_(std::exchange(other.handle_, nullptr)) {}
  OwnedCublas& operator=(OwnedCublas&& other) noexcept {
    if (this != &other) {
      if (handle_ != nullptr) cublasDestroy(handle_);
      handle_ = std::exchange(other.handle_, nullptr);
    }
    return *this;
  }
  OwnedCublas(const OwnedCublas&) = delete;
  OwnedCublas& operator=(const OwnedCublas&) = delete;
  ~OwnedCublas() {
    if (handle_ != nullptr) cublasDestroy(handle_);
  }
  cublasHandle_t get() const { return handle_; }

 private:
  cublasHandle_t handle_ = nullptr;
};

/// Makes `device` current for a scope and restores the previous device after it.
class DeviceScope {
 public:
  explicit DeviceScope(int device) {
    int current = 0;
    cuda_check(cudaGetDevice(&current), "cudaGetDevice");
    if (current != device) {
      cuda_check(cudaSetDevice(device), "cudaSetDevice");
      previous_ = current;
    }
  }
  /// The non-throwing form (for noexcept paths): `status` receives the first error.
  DeviceScope(int device, cudaError_t& status) noexcept {
    int current = 0;
    status = cudaGetDevice(&current);
    if (status == cudaSuccess && current != device) {
      status = cudaSetDevice(device);
      if (status == cudaSuccess) previous_ = current;
    }
  }
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;
  ~DeviceScope() {
    if (previous_ >= 0) cudaSetDevice(previous_);
  }

 private:
  int previous_ = -1;
};

/// Borrows a cuBLAS handle for a scope: sets its stream, host pointer mode and default (non-TF32)
/// math mode, and restores the caller's settings afterwards.
class CublasScope {
 public:
  CublasScope(cublasHandle_t handle, cudaStream_t stream) : handle_(handle) {
    cublas_check(cublasGetStream(handle_, &stream_), "cublasGetStream");
    cublas_check(cublasGetPointerMode(handle_, &pointer_mode_), "cublasGetPointerMode");
    cublas_check(cublasGetMathMode(handle_, &math_mode_), "cublasGetMathMode");
    cublas_check(cublasSetStream(handle_, stream), "cublasSetStream");
    cublas_check(cublasSetPointerMode(handle_, CUBLAS_POINTER_MODE_HOST), "cublasSetPointerMode");
    cublas_check(cublasSetMathMode(handle_, CUBLAS_DEFAULT_MATH), "cublasSetMathMode");
  }
  CublasScope(const CublasScope&) = delete;
  CublasScope& operator=(const CublasScope&) = delete;
  ~CublasScope() {
    cublasSetMathMode(handle_, math_mode_);
    cublasSetPointerMode(handle_, pointer_mode_);
    cublasSetStream(handle_, stream_);
  }

 private:
  cublasHandle_t handle_;
  cudaStream_t stream_ = nullptr;
  cublasPointerMode_t pointer_mode_ = CUBLAS_POINTER_MODE_HOST;
  cublasMath_t math_mode_ = CUBLAS_DEFAULT_MATH;
};

}  // namespace protomem::detail
