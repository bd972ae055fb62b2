// protomem::data::decode_image — decodes a JPEG (libjpeg-turbo) or PNG (libpng) held in memory to
// 8-bit grayscale or RGB pixels at a fixed size.
//
// The format is told by the first bytes (JPEG: FF D8 FF, PNG: its 8-byte signature), not by a file
// name. Colour: JPEG is converted by libjpeg (YCbCr -> RGB, or Y alone for grayscale; gray -> RGB
// repeats it); PNG by libpng's simplified API (palette, 16-bit and gray+alpha inputs are converted,
// alpha is composited onto black). When the decoded size differs from the requested one the image
// is resampled with a separable triangle (bilinear) filter whose support widens by the shrink
// factor, so shrinking averages every source pixel (Pillow's BILINEAR does the same) rather than
// aliasing; an image already at the requested size is returned unchanged.
//
// Requires: libjpeg-turbo and libpng (target protomem::data); width, height >= 1; channels 1 or 3.
// Guarantees: pixels row-major, interleaved (height x width x channels); a JPEG or PNG that the
// library cannot decode - truncated, corrupt, or any libjpeg warning, which marks corrupt data -
// throws protomem::Error naming `source` and the library's message; never longjmps across C++
// frames that own resources. Bounded (DecodeLimits): the size an image's header claims is checked
// against max_pixels before anything is allocated for its pixels, so a few hundred bytes claiming
// 65000 x 65000 are an Error, not 4 GB of zeros; a JPEG with more than max_jpeg_scans scans (each
// scan re-reads the whole image: 20,000 of them took 45 s) is an Error when the next scan starts.
#pragma once

// <jpeglib.h> needs FILE and size_t declared before it.
#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>
// clang-format on
#include <png.h>
#include <setjmp.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <protomem/error.hpp>
#include <string>
#include <vector>

namespace protomem::data {

struct ImageSize {
  int width = 0;
  int height = 0;
  int channels = 1;  ///< 1 (grayscale) or 3 (RGB)
};

/// Bounds on what one image may cost, checked before the cost is paid (see the header comment).
struct DecodeLimits {
  /// The most pixels (width x height) a header may claim: 2^24 = 4096 x 4096, far above face and
  /// glyph crops (112 x 112), far below what a hostile header asks (65500 x 65500 x 3 = 12 GB).
  std::uint64_t max_pixels = std::uint64_t{1} << 24;
  /// The most scans a JPEG may hold. Encoders write 1 (baseline) to about 10 (progressive;
  /// jpegtran's script: 10); libjpeg-turbo's own guard (TJFLAG_LIMITSCANS) allows 500.
  int max_jpeg_scans = 100;
};

struct Image {
  int width = 0;
  int height = 0;
  int channels = 0;
  std::vector<std::uint8_t> pixels;  ///< height x width x channels
};

namespace detail {

struct JpegError {
  jpeg_error_mgr manager;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

extern "C" inline void protomem_jpeg_error_exit(j_common_ptr info) {
  auto* error = reinterpret_cast<JpegError*>(info->err);
  (*info->err->format_message)(info, error->message);
  longjmp(error->jump, 1);
}
// A libjpeg warning (e.g. "Premature end of JPEG file") means the data are corrupt; libjpeg would
// go on with made-up pixels, so it is an error here.
extern "C" inline void protomem_jpeg_emit_message(j_common_ptr info, int level) {
  if (level < 0) protomem_jpeg_error_exit(info);
}

struct JpegProgress {
  jpeg_progress_mgr manager;
  int max_scans;
};
// Called before each piece of input a multi-scan JPEG's decoder absorbs: stops at the scan past
// the limit, before its data is decoded.
extern "C" inline void protomem_jpeg_progress(j_common_ptr info) {
  if (!info->is_decompressor) return;
  const auto* progress = reinterpret_cast<const JpegProgress*>(info->progress);
  if (reinterpret_cast<j_decompress_ptr>(info)->input_scan_number > progress->max_scans) {
    auto* error = reinterpret_cast<JpegError*>(info->err);
    std::snprintf(error->message, JMSG_LENGTH_MAX,
                  "more than %d scans, the limit (DecodeLimits::max_jpeg_scans)",
                  progress->max_scans);
    longjmp(error->jump, 1);
  }
}

/// True, with "header claims W x H = N pixels, more than the limit of L" in `message`, when a
/// header's size is over DecodeLimits::max_pixels.
inline bool over_pixel_limit(std::uint64_t width, std::uint64_t height,
                             const DecodeLimits& limits, char* message, std::size_t size) {
  if (width * height <= limits.max_pixels) return false;  // both < 2^32: no wrap
  std::snprintf(message, size,
                "header claims %llu x %llu = %llu pixels, more than the limit of %llu "
                "(DecodeLimits::max_pixels)",
                static_cast<unsigned long long>(width), static_cast<unsigned long long>(height),
                static_cast<unsigned long long>(width * height),
                static_cast<unsigned long long>(limits.max_pixels));
  return true;
}

/// Decodes a JPEG into `out` (resized by the callee to height x width x channels). Returns false
/// with `message` filled when libjpeg fails. No object with a destructor lives in this frame
/// between setjmp and a longjmp back to it.
inline bool decode_jpeg_raw(const unsigned char* data, std::size_t size, int channels,
                            const DecodeLimits& limits, std::vector<std::uint8_t>* out, int* width,
                            int* height, char* message) {
  jpeg_decompress_struct info;
  JpegError error;
  JpegProgress progress;
  info.err = jpeg_std_error(&error.manager);
  error.manager.error_exit = protomem_jpeg_error_exit;
  error.manager.emit_message = protomem_jpeg_emit_message;
  error.message[0] = '\0';
  progress.manager.progress_monitor = protomem_jpeg_progress;
  progress.max_scans = limits.max_jpeg_scans;
  if (setjmp(error.jump)) {
    std::snprintf(message, JMSG_LENGTH_MAX, "%s", error.message);
    jpeg_destroy_decompress(&info);
    return false;
  }
  jpeg_create_decompress(&info);
  info.progress = &progress.manager;
  jpeg_mem_src(&info, data, static_cast<unsigned long>(size));
  jpeg_read_header(&info, TRUE);
  // Before jpeg_start_decompress, which allocates the image's buffers.
  if (over_pixel_limit(info.image_width, info.image_height, limits, message, JMSG_LENGTH_MAX)) {
    jpeg_destroy_decompress(&info);
    return false;
  }
  info.out_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_start_decompress(&info);
  *width = static_cast<int>(info.output_width);
  *height = static_cast<int>(info.output_height);
  const std::size_t stride = static_cast<std::size_t>(info.output_width) * channels;
  out->resize(stride * info.output_height);
  while (info.output_scanline < info.output_height) {
    JSAMPROW row = out->data() + stride * info.output_scanline;
    jpeg_read_scanlines(&info, &row, 1);
  }
  jpeg_finish_decompress(&info);
  jpeg_destroy_decompress(&info);
  return true;
}

/// Weights of the separable triangle filter from `in` samples to `out` samples.
struct ResampleTaps {
  std::vector<int> first;       // first source index of output i
  std::vector<int> count;       // number of taps of output i
  std::vector<double> weights;  // count[i] weights per output, at i * max_taps
  int max_taps = 0;
};

inline ResampleTaps resample_taps(int in, int out) {
  const double scale = static_cast<double>(in) / out;
  const double support = std::max(1.0, scale);  // triangle of half-width `support` source pixels
  ResampleTaps taps;
  taps.max_taps = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(static_cast<std::size_t>(out));
  taps.count.resize(static_cast<std::size_t>(out));
  taps.weights.assign(static_cast<std::size_t>(out) * taps.max_taps, 0.0);
  for (int i = 0; i < out; ++i) {
    const double centre = (i + 0.5) * scale;  // in source pixel units
    const int from = std::max(0, static_cast<int>(std::floor(centre - support)));
    const int to = std::min(in, static_cast<int>(std::ceil(centre + support)));
    double total = 0;
    int n = 0;
    double* w = &taps.weights[static_cast<std::size_t>(i) * taps.max_taps];
    for (int j = from; j < to && n < taps.max_taps; ++j) {
      const double x = std::abs((j + 0.5 - centre) / support);
      w[n] = x < 1 ? 1 - x : 0;
      total += w[n++];
    }
    for (int k = 0; k < n; ++k) w[k] /= total;
    taps.first[static_cast<std::size_t>(i)] = from;
    taps.count[static_cast<std::size_t>(i)] = n;
  }
  return taps;
}

}  // namespace detail

/// Resamples `image` to `width` x `height` (see the header comment); same size: returned as is.
inline Image resize_image(const Image& image, int width, int height) {
  if (image.width == width && image.height == height) return image;
  const int c = image.channels;
  const auto tx = detail::resample_taps(image.width, width);
  const auto ty = detail::resample_taps(image.height, height);
  // Rows first (height x new width), then columns.
  std::vector<double> rows(static_cast<std::size_t>(image.height) * width * c);
  for (int y = 0; y < image.height; ++y) {
    for (int x = 0; x < width; ++x) {
      const double* w = &tx.weights[static_cast<std::size_t>(x) * tx.max_taps];
      const int first = tx.first[static_cast<std::size_t>(x)];
      for (int ch = 0; ch < c; ++ch) {
        double sum = 0;
        for (int k = 0; k < tx.count[static_cast<std::size_t>(x)]; ++k) {
          sum += w[k] * image.pixels[(static_cast<std::size_t>(y) * image.width + first + k) * c +
                                     static_cast<std::size_t>(ch)];
        }
        rows[(static_cast<std::size_t>(y) * width + x) * c + static_cast<std::size_t>(ch)] = sum;
      }
    }
  }
  Image out{width, height, c,
            std::vector<std::uint8_t>(static_cast<std::size_t>(width) * height * c)};
  for (int y = 0; y < height; ++y) {
    const double* w = &ty.weights[static_cast<std::size_t>(y) * ty.max_taps];
    const int first = ty.first[static_cast<std::size_t>(y)];
    for (int x = 0; x < width; ++x) {
      for (int ch = 0; ch < c; ++ch) {
        double sum = 0;
        for (int k = 0; k < ty.count[static_cast<std::size_t>(y)]; ++k) {
          sum += w[k] * rows[(static_cast<std::size_t>(first + k) * width + x) * c +
                             static_cast<std::size_t>(ch)];
        }
        out.pixels[(static_cast<std::size_t>(y) * width + x) * c + static_cast<std::size_t>(ch)] =
            static_cast<std::uint8_t>(std::clamp(std::lround(sum), 0L, 255L));
      }
    }
  }
  return out;
}

/// Limits a caller may set: max_pixels >= 1, max_jpeg_scans >= 1 (`who` names the caller).
inline void check_decode_limits(const DecodeLimits& limits, const char* who) {
  if (limits.max_pixels < 1) {
    protomem::detail::fail(who, ": DecodeLimits::max_pixels = 0 (must be >= 1)");
  }
  if (limits.max_jpeg_scans < 1) {
    protomem::detail::fail(who, ": DecodeLimits::max_jpeg_scans = ", limits.max_jpeg_scans,
                           " (must be >= 1)");
  }
}

/// The size images are resized to is held to max_pixels too: a huge one would be allocated.
inline void check_output_size(const ImageSize& size, const DecodeLimits& limits, const char* who) {
  const auto pixels =
      static_cast<std::uint64_t>(size.width) * static_cast<std::uint64_t>(size.height);
  if (pixels > limits.max_pixels) {
    protomem::detail::fail(who, ": image size ", size.width, "x", size.height, " = ", pixels,
                           " pixels is more than DecodeLimits::max_pixels = ", limits.max_pixels);
  }
}

/// Decodes a JPEG or PNG at its own size, to `channels` (1 or 3) channels, within `limits`.
inline Image decode_image(const unsigned char* data, std::size_t size, int channels,
                          const std::string& source, const DecodeLimits& limits = {}) {
  if (channels != 1 && channels != 3) {
    protomem::detail::fail("decode_image: channels = ", channels, " (must be 1 or 3)");
  }
  check_decode_limits(limits, "decode_image");
  static constexpr unsigned char png_signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
  Image image;
  image.channels = channels;
  if (size >= 3 && data[0] == 0xff && data[1] == 0xd8 && data[2] == 0xff) {
    char message[JMSG_LENGTH_MAX];
    if (!detail::decode_jpeg_raw(data, size, channels, limits, &image.pixels, &image.width,
                                 &image.height, message)) {
      protomem::detail::fail(source, ": cannot decode JPEG (", size, " bytes): ", message);
    }
    return image;
  }
  if (size >= 8 && std::equal(png_signature, png_signature + 8, data)) {
    png_image png{};
    png.version = PNG_IMAGE_VERSION;
    if (!png_image_begin_read_from_memory(&png, data, size)) {
      const std::string message = png.message;
      png_image_free(&png);
      protomem::detail::fail(source, ": cannot decode PNG (", size, " bytes): ", message);
    }
    char over[200];
    if (detail::over_pixel_limit(png.width, png.height, limits, over, sizeof over)) {
      png_image_free(&png);  // before PNG_IMAGE_SIZE bytes are allocated and zeroed
      protomem::detail::fail(source, ": cannot decode PNG (", size, " bytes): ", over);
    }
    png.format = channels == 1 ? PNG_FORMAT_GRAY : PNG_FORMAT_RGB;
    image.width = static_cast<int>(png.width);
    image.height = static_cast<int>(png.height);
    image.pixels.resize(PNG_IMAGE_SIZE(png));
    if (!png_image_finish_read(&png, nullptr, image.pixels.data(), 0, nullptr)) {
      const std::string message = png.message;
      png_image_free(&png);
      protomem::detail::fail(source, ": cannot decode PNG (", size, " bytes): ", message);
    }
    return image;
  }
  protomem::detail::fail(source, ": not a JPEG or PNG image (", size, " bytes, starting ",
                         protomem::detail::escaped(std::string(reinterpret_cast<const char*>(data),
                                                               std::min<std::size_t>(size, 8))),
                         ")");
}

/// Decodes and resizes to `want` (see the header comment).
inline Image decode_image(const unsigned char* data, std::size_t size, const ImageSize& want,
                          const std::string& source, const DecodeLimits& limits = {}) {
  if (want.width < 1 || want.height < 1) {
    protomem::detail::fail("decode_image: size ", want.width, "x", want.height,
                           " (both must be >= 1)");
  }
  check_output_size(want, limits, "decode_image");
  return resize_image(decode_image(data, size, want.channels, source, limits), want.width,
                      want.height);
}

}  // namespace protomem::data
