// protomem/data.hpp — the image data reader, in one include: insightface RecordIO, list files and
// image folders (protomem/data/sources.hpp), JPEG/PNG decoding (protomem/data/decode.hpp) and the
// threaded, prefetching batch loader (protomem/data/loader.hpp). See docs/data.md.
//
// Requires: target protomem::data (libjpeg-turbo, libpng, threads; a POSIX system).
// Guarantees: nothing beyond the headers it includes.
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <protomem/data/decode.hpp>
#include <protomem/data/loader.hpp>
#include <protomem/data/recordio.hpp>
#include <protomem/data/sources.hpp>
