// Real images for examples/train (--data): a training set and a held-out set, each an insightface
// RecordIO pair (.rec), a list file or an image folder (protomem/data.hpp), decoded to a fixed
// size and fed to the encoder as (pixel - 127.5) / 128, channels first, flattened (the CNN encoder
// unflattens; the MLP reads the vector).
//
// Identities are the data set's classes in label order: training identity c is the c-th class of
// the training set (so any labels work). The trainer addresses an image as (identity, i): the i-th
// sample of that class. Identities N + j (N training identities) are held-out class order_[j]:
// first the held-out classes with at least --eval-images images (the verification identities),
// then the rest (one image each serves as a distractor).
//
// Requires: protomem::data (libjpeg-turbo, libpng).
// Guarantees: batches are the same for any --loader-threads (protomem::data::ImageLoader); an
// unreadable or undecodable image stops the run with protomem::Error naming the file and record.
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <protomem/data.hpp>
#include <stdexcept>
#include <string>
#include <vector>

namespace images {

struct Config {
  std::string train;    // --data
  std::string heldout;  // --heldout (default: heldout.rec beside a train.rec)
  int size = 32;        // --image-size: images are size x size
  int channels = 1;     // --channels 1|3
  int threads = 2;      // --loader-threads
  int prefetch = 4;     // batches decoded ahead
  // --max-image-pixels, --max-jpeg-scans: an image over a limit is an undecodable sample.
  protomem::data::DecodeLimits limits{};
};

/// The held-out path by default: heldout.<ext> beside train.<ext>.
inline std::string default_heldout(const std::string& train) {
  const std::size_t slash = train.rfind('/');
  const std::string folder = slash == std::string::npos ? "" : train.substr(0, slash + 1);
  const std::string name = slash == std::string::npos ? train : train.substr(slash + 1);
  if (name.rfind("train", 0) != 0) return "";
  return folder + "heldout" + name.substr(5);
}

class ImageSet {
 public:
  ImageSet(const Config& c, std::int64_t eval_images)
      : config_(c),
        train_(protomem::data::open_image_source(c.train)),
        heldout_(protomem::data::open_image_source(c.heldout)) {
    const auto& h = heldout_->index();
    for (protomem::index_t k = 0; k < h.num_classes(); ++k) {
      if (h.class_size(k) >= eval_images) order_.push_back(k);
    }
    verification_ = static_cast<std::int64_t>(order_.size());
    for (protomem::index_t k = 0; k < h.num_classes(); ++k) {
      if (h.class_size(k) < eval_images) order_.push_back(k);
    }
  }

  std::int64_t identities() const { return train_->index().num_classes(); }
  /// Held-out identities with at least eval_images images, and all held-out identities.
  std::int64_t verification_identities() const { return verification_; }
  std::int64_t heldout_identities() const { return static_cast<std::int64_t>(order_.size()); }
  std::int64_t image_dim() const {
    return static_cast<std::int64_t>(config_.size) * config_.size * config_.channels;
  }
  std::int64_t channels() const { return config_.channels; }
  std::int64_t size() const { return config_.size; }
  /// Images of each training identity.
  std::vector<std::int64_t> counts() const {
    std::vector<std::int64_t> n;
    for (protomem::index_t c = 0; c < identities(); ++c) n.push_back(train_->index().class_size(c));
    return n;
  }
  std::int64_t train_images() const { return train_->size(); }
  const protomem::data::ImageSource& train_source() const { return *train_; }
  /// No planted look-alikes are known in real data.
  std::int64_t lookalike_of(std::int64_t) const { return -1; }

  /// The training sample ids of (identity, i) pairs.
  std::vector<protomem::index_t> train_samples(const std::vector<std::int64_t>& ids,
                                               const std::vector<std::int64_t>& idx) const {
    std::vector<protomem::index_t> s(ids.size());
    for (std::size_t i = 0; i < ids.size(); ++i) s[i] = sample(*train_, ids[i], idx[i]);
    return s;
  }
  /// The training identity of training sample `s`.
  std::int64_t identity_of(protomem::index_t s) const {
    return train_->index().class_index(train_->label(s));
  }

  /// A loader of training batches whose sample ids come from `next_samples`.
  std::unique_ptr<protomem::data::ImageLoader> loader(
      protomem::data::ImageLoader::NextSamples next_samples) const {
    return std::make_unique<protomem::data::ImageLoader>(*train_, std::move(next_samples),
                                                         options());
  }

  /// `pixels` of n images (HWC uint8) as the encoder's input rows.
  at::Tensor to_tensor(std::vector<std::uint8_t>& pixels, std::int64_t n) const {
    const std::int64_t s = config_.size, c = config_.channels;
    return at::from_blob(pixels.data(), {n, s, s, c}, at::kByte)
        .permute({0, 3, 1, 2})
        .reshape({n, c * s * s})
        .to(at::kFloat)
        .sub_(127.5)
        .div_(128.0);
  }

  /// Images (identity, i) into `out` (n x image_dim floats); identities >= N are held out. Decoded
  /// on the loader's threads, in chunks.
  void images(const std::int64_t* ids, const std::int64_t* idx, std::int64_t n, float* out) const {
    const std::int64_t N = identities();
    std::vector<protomem::index_t> train_ids, heldout_ids;
    std::vector<std::int64_t> train_rows, heldout_rows;
    for (std::int64_t i = 0; i < n; ++i) {
      if (ids[i] < N) {
        train_ids.push_back(sample(*train_, ids[i], idx[i]));
        train_rows.push_back(i);
      } else {
        const std::int64_t j = ids[i] - N;
        if (j >= heldout_identities()) throw std::out_of_range("held-out identity out of range");
        heldout_ids.push_back(sample(*heldout_, order_[static_cast<std::size_t>(j)], idx[i]));
        heldout_rows.push_back(i);
      }
    }
    decode(*train_, train_ids, train_rows, out);
    decode(*heldout_, heldout_ids, heldout_rows, out);
  }

 private:
  protomem::data::LoaderOptions options() const {
    protomem::data::LoaderOptions o;
    o.size = {config_.size, config_.size, config_.channels};
    o.threads = config_.threads;
    o.prefetch = config_.prefetch;
    o.limits = config_.limits;
    return o;
  }

  static protomem::index_t sample(const protomem::data::ImageSource& source, std::int64_t cls,
                                  std::int64_t i) {
    const auto members = source.index().samples(cls);
    return members[i % members.size];
  }

  void decode(const protomem::data::ImageSource& source, const std::vector<protomem::index_t>& ids,
              const std::vector<std::int64_t>& rows, float* out) const {
    if (ids.empty()) return;
    constexpr std::size_t chunk = 256;
    std::size_t next = 0;
    protomem::data::ImageLoader loader(
        source,
        [&] {
          const std::size_t from = std::min(next, ids.size()),
                            to = std::min(from + chunk, ids.size());
          next = to;
          return std::vector<protomem::index_t>(ids.begin() + static_cast<std::ptrdiff_t>(from),
                                                ids.begin() + static_cast<std::ptrdiff_t>(to));
        },
        options());
    const std::int64_t dim = image_dim();
    for (std::size_t from = 0; from < ids.size(); from += chunk) {
      protomem::data::ImageBatch b = loader.next();
      const auto n = static_cast<std::int64_t>(b.samples.size());
      const at::Tensor x = to_tensor(b.pixels, n).contiguous();
      for (std::int64_t r = 0; r < n; ++r) {
        std::copy(x.data_ptr<float>() + r * dim, x.data_ptr<float>() + (r + 1) * dim,
                  out + rows[from + static_cast<std::size_t>(r)] * dim);
      }
    }
  }

  Config config_;
  std::unique_ptr<protomem::data::ImageSource> train_, heldout_;
  std::vector<protomem::index_t> order_;  // held-out identity j -> held-out class index
  std::int64_t verification_ = 0;
};

// ---- the CNN encoder ----------------------------------------------------------------------------

/// An IResNet block (insightface's IBasicBlock): BN-conv3x3-BN-PReLU-conv3x3(stride)-BN plus the
/// shortcut (1x1 conv + BN where the shape changes).
struct IBlockImpl : ::torch::nn::Module {
  IBlockImpl(std::int64_t in, std::int64_t out, std::int64_t stride) {
    namespace nn = ::torch::nn;
    bn1 = register_module("bn1", nn::BatchNorm2d(in));
    conv1 =
        register_module("conv1", nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1).bias(false)));
    bn2 = register_module("bn2", nn::BatchNorm2d(out));
    prelu = register_module("prelu", nn::PReLU(nn::PReLUOptions().num_parameters(out)));
    conv2 = register_module(
        "conv2", nn::Conv2d(nn::Conv2dOptions(out, out, 3).stride(stride).padding(1).bias(false)));
    bn3 = register_module("bn3", nn::BatchNorm2d(out));
    if (stride != 1 || in != out) {
      down = register_module(
          "down",
          nn::Sequential(nn::Conv2d(nn::Conv2dOptions(in, out, 1).stride(stride).bias(false)),
                         nn::BatchNorm2d(out)));
    }
  }
  at::Tensor forward(const at::Tensor& x) {
    const at::Tensor y = bn3(conv2(prelu(bn2(conv1(bn1(x))))));
    return y + (down ? down->forward(x) : x);
  }
  ::torch::nn::BatchNorm2d bn1{nullptr}, bn2{nullptr}, bn3{nullptr};
  ::torch::nn::Conv2d conv1{nullptr}, conv2{nullptr};
  ::torch::nn::PReLU prelu{nullptr};
  ::torch::nn::Sequential down{nullptr};
};
TORCH_MODULE(IBlock);

/// A small IResNet: conv3x3-BN-PReLU stem at `width` channels, three stages of `depth` blocks at
/// width, 2 width, 4 width channels, each halving the resolution, then BN-dropout-free FC-BN to
/// the embedding (insightface's output layer).
inline ::torch::nn::Sequential make_cnn(std::int64_t channels, std::int64_t size,
                                        std::int64_t width, std::int64_t depth, std::int64_t dim) {
  namespace nn = ::torch::nn;
  nn::Sequential net(nn::Unflatten(nn::UnflattenOptions(1, {channels, size, size})),
                     nn::Conv2d(nn::Conv2dOptions(channels, width, 3).padding(1).bias(false)),
                     nn::BatchNorm2d(width), nn::PReLU(nn::PReLUOptions().num_parameters(width)));
  std::int64_t in = width, side = size;
  for (std::int64_t stage = 0; stage < 3; ++stage) {
    const std::int64_t out = width << stage;
    for (std::int64_t b = 0; b < depth; ++b) {
      net->push_back(IBlock(b == 0 ? in : out, out, b == 0 ? 2 : 1));
    }
    in = out;
    side = (side + 1) / 2;
  }
  net->push_back(nn::BatchNorm2d(in));
  net->push_back(nn::Flatten());
  net->push_back(nn::Linear(in * side * side, dim));
  net->push_back(nn::BatchNorm1d(dim));
  return net;
}

}  // namespace images
