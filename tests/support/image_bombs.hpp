// Small hostile images for the decoder's limits (protomem/data/decode.hpp, DecodeLimits), built
// byte by byte or from a libjpeg encode, each a few hundred bytes (shared by tests/test_data.cpp
// and the fuzz seed generator, tests/fuzz/make_seeds.cpp):
//   jpeg_claiming(w, h, channels)  a valid 8 x 8 JPEG whose frame header is patched to claim w x h
//   png_claiming(w, h)             a PNG whose IHDR claims w x h (8-bit gray), with an empty IDAT
//   jpeg_with_scans(n)             a valid progressive 8 x 8 gray JPEG of n identical DC scans
// Without the limits the first two make the decoder allocate and zero w x h x channels bytes
// before it reads a pixel, the third costs n passes over the image.
#pragma once

#include <cstddef>
#include <cstdio>
// clang-format off
#include <jpeglib.h>  // after <cstdio>: it needs FILE and size_t
// clang-format on

#include <cstdint>
#include <cstdlib>
#include <protomem/detail/serialize.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace protomem_test {

inline void put_u16_be(std::string& s, unsigned v) {
  s += static_cast<char>((v >> 8) & 0xff);
  s += static_cast<char>(v & 0xff);
}
inline void put_u32_be(std::string& s, std::uint32_t v) {
  put_u16_be(s, v >> 16);
  put_u16_be(s, v & 0xffff);
}

/// `pixels` (h x w x channels) encoded by libjpeg at `quality`, optionally progressive
/// (jpeg_simple_progression) and with optimised Huffman tables (smaller).
inline std::string encode_jpeg(const std::vector<unsigned char>& pixels, int w, int h, int channels,
                               int quality, bool progressive = false, bool optimize = false) {
  jpeg_compress_struct info;
  jpeg_error_mgr error;
  info.err = jpeg_std_error(&error);
  jpeg_create_compress(&info);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&info, &buffer, &size);
  info.image_width = static_cast<JDIMENSION>(w);
  info.image_height = static_cast<JDIMENSION>(h);
  info.input_components = channels;
  info.in_color_space = channels == 1 ? JCS_GRAYSCALE : JCS_RGB;
  jpeg_set_defaults(&info);
  jpeg_set_quality(&info, quality, TRUE);
  info.optimize_coding = optimize ? TRUE : FALSE;
  if (progressive) jpeg_simple_progression(&info);
  jpeg_start_compress(&info, TRUE);
  while (info.next_scanline < info.image_height) {
    auto* row =
        const_cast<unsigned char*>(pixels.data()) +
        static_cast<std::size_t>(info.next_scanline) * static_cast<std::size_t>(w * channels);
    jpeg_write_scanlines(&info, &row, 1);
  }
  jpeg_finish_compress(&info);
  jpeg_destroy_compress(&info);
  std::string out(reinterpret_cast<char*>(buffer), size);
  std::free(buffer);
  return out;
}

/// An 8 x 8 JPEG from libjpeg (optimised Huffman tables: small), its SOF0 patched to w x h.
inline std::string jpeg_claiming(unsigned width, unsigned height, int channels) {
  const std::string out =
      encode_jpeg(std::vector<unsigned char>(static_cast<std::size_t>(64 * channels), 128), 8, 8,
                  channels, 75, false, true);
  for (std::size_t i = 2; i + 9 < out.size(); ++i) {  // FF C0 | length | P | Y | X
    if (static_cast<unsigned char>(out[i]) == 0xff &&
        static_cast<unsigned char>(out[i + 1]) == 0xc0) {
      std::string patched = out.substr(0, i + 5);
      put_u16_be(patched, height);
      put_u16_be(patched, width);
      return patched + out.substr(i + 9);
    }
  }
  throw std::runtime_error("jpeg_claiming: libjpeg wrote no SOF0 marker");
}

inline std::string png_chunk(const char* type, const std::string& data) {
  std::string chunk;
  put_u32_be(chunk, static_cast<std::uint32_t>(data.size()));
  const std::string body = std::string(type, 4) + data;
  chunk += body;
  put_u32_be(chunk, protomem::detail::crc32(body.data(), body.size()));  // zlib's CRC-32, as PNG
  return chunk;
}

/// A PNG claiming w x h 8-bit gray pixels; its IDAT is an empty zlib stream (no pixel at all).
inline std::string png_claiming(std::uint32_t width, std::uint32_t height) {
  std::string ihdr;
  put_u32_be(ihdr, width);
  put_u32_be(ihdr, height);
  ihdr += std::string("\x08\x00\x00\x00\x00", 5);  // depth 8, gray, deflate, filter 0, no interlace
  const std::string empty_zlib("\x78\x9c\x03\x00\x00\x00\x00\x01", 8);
  return std::string("\x89PNG\r\n\x1a\n", 8) + png_chunk("IHDR", ihdr) +
         png_chunk("IDAT", empty_zlib) + png_chunk("IEND", "");
}

/// A progressive 8 x 8 gray JPEG of `scans` DC first scans (each valid: Ah = the previous Al = 0),
/// 11 bytes a scan.
inline std::string jpeg_with_scans(int scans) {
  std::string j("\xff\xd8", 2);                                                  // SOI
  j += std::string("\xff\xdb\x00\x43\x00", 5) + std::string(64, '\x01');         // DQT 0: all ones
  j += std::string("\xff\xc2\x00\x0b\x08\x00\x08\x00\x08\x01\x01\x11\x00", 13);  // SOF2 8x8, 1 comp
  // DHT DC 0: one code of length 1 ("0") for category 0 (a DC difference of 0).
  j += std::string("\xff\xc4\x00\x14\x00\x01", 6) + std::string(15, '\0') + std::string(1, '\0');
  for (int s = 0; s < scans; ++s) {
    j += std::string("\xff\xda\x00\x08\x01\x01\x00\x00\x00\x00", 10);  // SOS: DC first, Al 0
    j += '\x7f';  // the block's code "0", padded with ones
  }
  return j + std::string("\xff\xd9", 2);  // EOI
}

}  // namespace protomem_test
