// Image data sets as protomem reads them: an ImageSource is a numbered list of samples, each with
// a label and its encoded image bytes (JPEG or PNG), and the DatasetIndex the samplers need.
//
//   RecordIOSource  an insightface train.rec + train.idx pair (protomem/data/recordio.hpp). Like
//                   insightface's own loader: when record 0's header has flag > 0 it is the set's
//                   header record, whose labels (a, b) say that records 1 .. a-1 are the images
//                   (records a .. b-1 describe identities and are not read); otherwise every .idx
//                   entry is an image, in .idx order. A sample's label is its header's first extra
//                   label when flag > 0, else its `label` field; it must be a non-negative integer.
//   ListSource      a list file, `<path> <label>` per line (DatasetIndex's list-file rules); a
//                   relative path is taken relative to the list file's folder.
//   FolderSource    a folder with one subfolder per identity: the subfolders in name order get
//                   labels 0, 1, ...; their .jpg/.jpeg/.png files (any case) in name order are the
//                   samples.
//
// Sample i of a source is the DatasetIndex's sample i, so a BatchSampler over index() yields ids
// to pass to bytes() (protomem/data/loader.hpp does this with threads).
//
// Requires: a POSIX system (protomem/data/recordio.hpp). bytes() is called from several threads.
// Guarantees: opening checks the structure - every RecordIO record's frame (magic, flag, length
// inside the file) and image header, reading those bytes but not the image; every list line - and
// throws protomem::Error naming the file and the record (key, byte offset) or line; with
// `skip_corrupt` a RecordIO record that fails those checks is left out instead and counted in
// skipped(). The parts of a split record, a missing or unreadable image file and an image that
// does not decode throw when the sample's bytes are read or decoded, naming the file and record.
// Every file opened - .rec, .idx, list file, image - must be a regular file (a directory, device,
// FIFO or socket is an Error at once, and nothing blocks), read up to its stat() size; an image
// file over SourceOptions::max_image_bytes is an Error before it is read. Paths in messages are
// escaped (protomem::detail::quoted_path).
#pragma once

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <protomem/data/recordio.hpp>
#include <protomem/data/dataset_index.hpp>
#include <protomem/detail/regular_file.hpp>
#include <protomem/error.hpp>
#include <string>
#include <utility>
#include <vector>

namespace protomem::data {

class ImageSource {
 public:
  virtual ~ImageSource() = default;
  index_t size() const { return static_cast<index_t>(labels_.size()); }
  label_t label(index_t sample) const { return labels_[static_cast<std::size_t>(sample)]; }
  const std::vector<label_t>& labels() const { return labels_; }
  /// Classes and their samples, for the samplers (protomem/data/sampler.hpp).
  const DatasetIndex& index() const { return *index_; }
  /// The encoded image of `sample` (thread-safe).
  virtual std::string bytes(index_t sample) const = 0;
  /// Where `sample` comes from, for messages: the file, and the record or line.
  virtual std::string describe(index_t sample) const = 0;
  /// Records left out at open time (skip_corrupt).
  std::uint64_t skipped() const { return skipped_; }

 protected:
  void set_labels(std::vector<label_t> labels) {
    labels_ = std::move(labels);
    index_ = std::make_unique<DatasetIndex>(DatasetIndex::from_labels(labels_));
  }
  std::uint64_t skipped_ = 0;

 private:
  std::vector<label_t> labels_;
  std::unique_ptr<DatasetIndex> index_;
};

struct SourceOptions {
  /// Leave out (and count) RecordIO records whose framing or header is malformed.
  bool skip_corrupt = false;
  /// The largest image file a list or folder source reads (64 MiB; a 112 x 112 face crop is a few
  /// KB). A larger one is an Error naming it, so a wrong path cannot read gigabytes.
  std::uint64_t max_image_bytes = std::uint64_t{64} << 20;
};

class RecordIOSource : public ImageSource {
 public:
  /// `rec_path` is the .rec file; its index is `idx_path`, or the same name with .idx.
  explicit RecordIOSource(const std::string& rec_path, const std::string& idx_path = "",
                          SourceOptions options = {})
      : file_(rec_path, idx_path.empty() ? idx_for(rec_path) : idx_path) {
    std::vector<std::uint64_t> keys;
    if (!(file_.contains(0) && header_record(&keys))) {
      keys.clear();
      for (const RecordEntry& e : file_.entries()) keys.push_back(e.key);
    }
    std::vector<label_t> labels;
    for (std::uint64_t key : keys) {
      try {
        labels.push_back(read_label(file_.entry(key)));
        keys_.push_back(key);
      } catch (const Error&) {
        if (!options.skip_corrupt) throw;
        ++skipped_;
      }
    }
    if (keys_.empty()) {
      protomem::detail::fail(protomem::detail::quoted_path(file_.rec_path()),
                             " holds no readable image record",
                             skipped_ > 0 ? " (every one was corrupt and skipped)" : "");
    }
    set_labels(std::move(labels));
  }

  std::string bytes(index_t sample) const override {
    const RecordEntry& e = file_.entry(keys_[static_cast<std::size_t>(sample)]);
    std::string payload = file_.read_at(e);
    std::size_t image = 0;
    unpack_image_record(payload, &image, describe(sample));
    payload.erase(0, image);
    return payload;
  }
  std::string describe(index_t sample) const override {
    return where(file_.entry(keys_[static_cast<std::size_t>(sample)]));
  }
  /// The record key of `sample`.
  std::uint64_t key(index_t sample) const { return keys_[static_cast<std::size_t>(sample)]; }
  const RecordIOFile& file() const { return file_; }

  static std::string idx_for(const std::string& rec_path) {
    const std::size_t dot = rec_path.rfind('.');
    const std::size_t slash = rec_path.rfind('/');
    const bool has_ext = dot != std::string::npos && (slash == std::string::npos || dot > slash);
    return (has_ext ? rec_path.substr(0, dot) : rec_path) + ".idx";
  }

 private:
  // insightface's header record: record 0 with flag > 0 and labels (a, b): images are 1 .. a-1.
  bool header_record(std::vector<std::uint64_t>* keys) const {
    const RecordEntry& e = file_.entry(0);
    const std::string payload = file_.read_at(e);
    std::size_t image = 0;
    const auto h = unpack_image_record(payload, &image, where(e));
    if (h.flag == 0) return false;
    if (h.labels.size() < 2 || !(h.labels[0] >= 1) || !(h.labels[0] <= h.labels[1]) ||
        h.labels[0] != std::floor(h.labels[0]) || h.labels[0] > 4294967296.0f) {
      protomem::detail::fail(where(e),
                             ": header record's labels must be (first identity record, "
                             "end) with 1 <= first <= end, integers; found ",
                             h.labels.empty() ? std::string("none") : describe_labels(h.labels));
    }
    const auto first_identity = static_cast<std::uint64_t>(h.labels[0]);
    for (std::uint64_t key = 1; key < first_identity; ++key) {
      if (!file_.contains(key)) {
        protomem::detail::fail(protomem::detail::quoted_path(file_.idx_path()), " lacks record ",
                               key,
                               ", an image (the "
                               "header record says images are records 1 .. ",
                               first_identity - 1, ")");
      }
      keys->push_back(key);
    }
    return true;
  }

  // Reads the record's frame and image header, not its image (a face set is tens of GB).
  label_t read_label(const RecordEntry& e) const {
    std::uint64_t length = 0;
    std::string payload = file_.read_prefix(e, 64, &length);
    if (payload.size() >= 4) {  // more extra labels than the first 64 bytes hold: read them all
      const std::size_t needed =
          kImageHeaderSize + 4U * std::size_t{detail::load_u32(
                                      reinterpret_cast<const unsigned char*>(payload.data()))};
      if (needed > payload.size() && length > payload.size()) {
        payload = file_.read_prefix(e, needed, &length);
      }
    }
    std::size_t image = 0;
    const auto h = unpack_image_record(payload, &image, where(e));
    const float value = h.flag > 0 ? h.labels[0] : h.label;
    if (!(value >= 0) || value != std::floor(value) || value > 9007199254740992.0f) {
      protomem::detail::fail(where(e), ": label ", value, " is not a non-negative integer");
    }
    if (image == length) protomem::detail::fail(where(e), ": holds no image bytes");
    return static_cast<label_t>(value);
  }

  std::string where(const RecordEntry& e) const {
    return protomem::detail::quoted_path(file_.rec_path()) + " record " + std::to_string(e.key) +
           " (offset " + std::to_string(e.offset) + ")";
  }
  static std::string describe_labels(const std::vector<float>& labels) {
    std::string s = "(";
    for (std::size_t k = 0; k < labels.size() && k < 4; ++k) {
      s += (k ? ", " : "") + std::to_string(labels[k]);
    }
    return s + (labels.size() > 4 ? ", ...)" : ")");
  }

  RecordIOFile file_;
  std::vector<std::uint64_t> keys_;  // sample -> record key
};

/// Samples as image files on disk (shared by ListSource and FolderSource).
class FileSource : public ImageSource {
 public:
  /// The file's bytes: a regular file of at most SourceOptions::max_image_bytes.
  std::string bytes(index_t sample) const override {
    return protomem::detail::read_regular_file(paths_[static_cast<std::size_t>(sample)],
                                               describe_only(sample), max_image_bytes_,
                                               "SourceOptions::max_image_bytes");
  }
  std::string describe(index_t sample) const override {
    return protomem::detail::quoted_path(paths_[static_cast<std::size_t>(sample)]) + " (" +
           describe_only(sample) + ")";
  }
  const std::vector<std::string>& paths() const { return paths_; }

 protected:
  explicit FileSource(const SourceOptions& options) : max_image_bytes_(options.max_image_bytes) {}
  virtual std::string describe_only(index_t sample) const = 0;
  std::vector<std::string> paths_;

 private:
  std::uint64_t max_image_bytes_;
};

class ListSource : public FileSource {
 public:
  explicit ListSource(const std::string& list_path, SourceOptions options = {})
      : FileSource(options), list_(list_path) {
    const DatasetIndex parsed = DatasetIndex::from_list_file(list_path);
    const std::filesystem::path folder = std::filesystem::path(list_path).parent_path();
    std::vector<label_t> labels;
    for (index_t i = 0; i < parsed.num_samples(); ++i) {
      const std::filesystem::path p(parsed.paths()[static_cast<std::size_t>(i)]);
      paths_.push_back(p.is_absolute() || folder.empty() ? p.string() : (folder / p).string());
      labels.push_back(parsed.label_of_sample(i));
    }
    set_labels(std::move(labels));
  }

 protected:
  std::string describe_only(index_t sample) const override {
    return "sample " + std::to_string(sample) + " of list " + protomem::detail::quoted_path(list_);
  }

 private:
  std::string list_;
};

class FolderSource : public FileSource {
 public:
  explicit FolderSource(const std::string& folder, SourceOptions options = {})
      : FileSource(options), folder_(folder) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::is_directory(folder, ec)) {
      protomem::detail::fail("image folder ", protomem::detail::quoted_path(folder),
                             " is not a folder");
    }
    std::vector<fs::path> identities;
    for_each_entry(folder, [&](const fs::directory_entry& entry, std::error_code& error) {
      if (entry.is_directory(error)) identities.push_back(entry.path());
    });
    std::sort(identities.begin(), identities.end());
    std::vector<label_t> labels;
    for (std::size_t label = 0; label < identities.size(); ++label) {
      std::vector<fs::path> files;
      for_each_entry(identities[label], [&](const fs::directory_entry& entry,
                                            std::error_code& error) {
        std::string ext = entry.path().extension().string();
        std::transform(ext.begin(), ext.end(), ext.begin(),
                       [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
        // Regular files only: a FIFO or device named x.jpg is not an image (and could block).
        if ((ext == ".jpg" || ext == ".jpeg" || ext == ".png") && entry.is_regular_file(error)) {
          files.push_back(entry.path());
        }
      });
      std::sort(files.begin(), files.end());
      for (const auto& f : files) {
        paths_.push_back(f.string());
        labels.push_back(static_cast<label_t>(label));
      }
      identity_names_.push_back(identities[label].filename().string());
    }
    if (paths_.empty()) {
      protomem::detail::fail("image folder ", protomem::detail::quoted_path(folder),
                             " holds no image");
    }
    set_labels(std::move(labels));
  }
  /// The subfolder name of label `l`.
  const std::string& identity_name(label_t l) const {
    return identity_names_[static_cast<std::size_t>(l)];
  }

 protected:
  std::string describe_only(index_t sample) const override {
    return "sample " + std::to_string(sample) + " of folder " +
           protomem::detail::quoted_path(folder_);
  }

 private:
  // Calls f(entry, error) for each entry of `folder`; a folder that cannot be listed, or an
  // entry whose kind cannot be read, is an Error naming it (not a std::filesystem_error). A
  // dangling symbolic link is no file and no folder: skipped, as before.
  template <class F>
  static void for_each_entry(const std::filesystem::path& folder, F&& f) {
    std::error_code error;
    std::filesystem::directory_iterator it(folder, error), end;
    for (; !error && it != end; it.increment(error)) {
      f(*it, error);
      if (error == std::errc::no_such_file_or_directory) error.clear();
      if (error) {
        protomem::detail::fail("image folder: cannot read ",
                               protomem::detail::quoted_path(it->path().string()), ": ",
                               error.message());
      }
    }
    if (error) {
      protomem::detail::fail("image folder: cannot list ",
                             protomem::detail::quoted_path(folder.string()), ": ", error.message());
    }
  }

 private:
  std::string folder_;
  std::vector<std::string> identity_names_;
};

/// Opens `path` by its kind: a folder, a .rec file (with its .idx), or else a list file.
inline std::unique_ptr<ImageSource> open_image_source(const std::string& path,
                                                      SourceOptions options = {}) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) return std::make_unique<FolderSource>(path, options);
  if (path.size() > 4 && path.compare(path.size() - 4, 4, ".rec") == 0) {
    return std::make_unique<RecordIOSource>(path, "", options);
  }
  return std::make_unique<ListSource>(path, options);
}

}  // namespace protomem::data
