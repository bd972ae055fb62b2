// Checkpoint framing: the byte layout of a memory's checkpoint (below), reading one from a stream,
// the structural and integrity checks of its bytes, and the framing every protomem state shares
// (8 magic bytes, a u32 version, the fields, a CRC-32 of everything before it), which the
// sampler's state uses too (sampler.hpp).
//
// Requires: the little-endian field encoding of serialize.hpp.
// Guarantees: parse_checkpoint() checks sizes by division (nothing wraps), reports truncation,
// trailing bytes and a checksum mismatch as protomem::Error naming the source, and leaves the
// record bytes to the caller's reader, positioned at the first record.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <filesystem>
#include <fstream>
#include <istream>
#include <iterator>
#include <limits>
#include <new>
#include <ostream>
#include <protomem/detail/bookkeeping.hpp>
#include <protomem/detail/regular_file.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <string>
#include <utility>
#include <vector>

namespace protomem::detail {

// ---- the framing shared by protomem's states
// ------------------------------------------------------

/// Starts a state: its 8 magic bytes and its format version.
inline void begin_frame(ByteWriter& out, const char* magic, std::uint32_t version) {
  out.bytes().append(magic, 8);
  out.put<std::uint32_t>(version);
}

/// Ends a state: the CRC-32 (zlib) of every byte before it.
inline void end_frame(ByteWriter& out) {
  out.put<std::uint32_t>(crc32(out.bytes().data(), out.bytes().size()));
}

inline bool has_magic(const std::string& bytes, const char* magic) {
  return bytes.size() >= 8 && bytes.compare(0, 8, magic, 8) == 0;
}

/// Checks the trailing CRC-32 of a whole state (`holder`: "the file", "the state").
inline void check_frame_crc(const std::string& bytes, const std::string& source,
                            const char* holder) {
  const std::size_t body = bytes.size() - 4;
  ByteReader tail(bytes.data() + body, 4, source);
  const auto stored = tail.get<std::uint32_t>("the checksum");
  const auto computed = crc32(bytes.data(), body);
  if (computed != stored) {
    fail(source, " is corrupt: CRC-32 is ", computed, " but ", holder, " says ", stored);
  }
}

// ---- files and streams
// ----------------------------------------------------------------------------

/// Writes a whole state to a stream; a failed write throws.
inline void write_stream(std::ostream& out, const std::string& bytes) {
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.flush();
  if (!out) fail("save: writing the checkpoint to the stream failed");
}

/// The whole content of the file at `path`: a regular file, read up to the size stat() gives it
/// (detail/regular_file.hpp), so a directory, /dev/zero or a FIFO is an Error at once.
inline std::string read_file(const std::string& path) { return read_regular_file(path, "load"); }

/// Runs `read` (which reads from a caller's stream) and turns whatever the stream throws - a
/// std::ios_base::failure where the caller enabled exceptions, or its buffer's own exception -
/// into an Error naming `source`. Error and std::bad_alloc pass through (the callers name them).
template <class Read>
auto reading_stream(const std::string& source, Read&& read) -> decltype(read()) {
  try {
    return read();
  } catch (const Error&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    fail(source, ": reading the stream failed: ", escaped(e.what()));
  } catch (...) {
    fail(source, ": reading the stream failed (a non-standard exception)");
  }
}

// ---- checkpoint format, version 2 (all integers little-endian) ----------------------------------
//   "PROTOMEM" | u32 version | u32 scalar bytes (4: float32, 8: float64) | u64 dim | u64 capacity
//   | i64 num_classes | u64 steps, refreshes, insertions, evictions
//   | 6 x policy (u32-length name of the family, u32-length policy name, u64-length state bytes):
//     margin, generator, refresh, queue, mining, aging
//   Version 1 (before the Aging policies) is version 2 without the aging policy; it is read as
//   aging "none" (NoAging).
//   | u64 n | n x record (i64 label, u64 slot, u64 last_written, dim scalars), in eviction order
//   Narrow storage (cpu_bf16, cpu_fp16) writes its decoded float values, so the file does not
//   record the storage: it loads into a float memory exactly, and a float checkpoint loads into a
//   narrow memory rounded as a write would round it.
//   | u32 CRC-32 (zlib) of every byte before it
inline constexpr char checkpoint_magic[9] = "PROTOMEM";
inline constexpr std::uint32_t checkpoint_version = 2;
inline constexpr std::uint32_t checkpoint_version_without_aging = 1;  // still read
inline constexpr std::uint32_t shard_checkpoint_version = 3;  // one rank's shard, below
inline constexpr int checkpoint_policies = 6;
inline constexpr const char* policy_families[checkpoint_policies] = {
    "margin", "generator", "refresh", "queue", "mining", "aging"};

template <class Policy>
void save_policy(ByteWriter& out, const char* family, const Policy& policy) {
  out.put_string(family);
  out.put_string(policy.name());
  ByteWriter state;
  policy.save(state);
  out.put_bytes(state.bytes());
}

/// A policy as stored: family, name and state, checked against the memory's once the file's
/// checksum holds.
struct StoredPolicy {
  std::string family, name, state;
};

/// The policy a checkpoint stores for `family`, as a holder (policies/any.hpp): loaded into a copy
/// of `current` when the names agree (so a user-written policy loads into itself), otherwise into
/// the built-in policy of the stored name - a checkpoint restores the policies it was saved with.
/// A name that is neither is an error naming both.
template <class Holder>
Holder load_policy(const StoredPolicy& stored, const char* family, const Holder& current,
                   const std::string& source) {
  if (stored.family != family) {
    fail(source, ": expected the ", family, " policy, found '", escaped(stored.family), "'");
  }
  ByteReader in(stored.state.data(), stored.state.size(), source);
  Holder policy = stored.name == current.name() ? current : Holder::builtin(stored.name, source);
  policy.load(in);
  if (in.remaining() != 0) {
    fail(source, ": the ", family, " policy state has ", in.remaining(),
         " unexpected trailing bytes");
  }
  return policy;
}

/// Every policy a checkpoint stores, each as load_policy() gives it back against `current` (a
/// protomem::Policies, policies/any.hpp: a template here, below the policies' layer).
template <class PolicySet>
PolicySet load_policies(const StoredPolicy (&stored)[checkpoint_policies],
                        const PolicySet& current, const std::string& source) {
  return PolicySet(load_policy(stored[0], "margin", current.margin, source),
                   load_policy(stored[1], "generator", current.generator, source),
                   load_policy(stored[2], "refresh", current.refresh, source),
                   load_policy(stored[3], "queue", current.queue, source),
                   load_policy(stored[4], "mining", current.mining, source),
                   load_policy(stored[5], "aging", current.aging, source));
}

/// The fields after the version that versions 2 and 3 share: scalar size, sizes, counters and the
/// six policies.
template <class Scalar, class... Policies>
void put_memory_header(ByteWriter& out, index_t dim, index_t capacity, label_t num_classes,
                       const Stats& stats, const Policies&... policies) {
  static_assert(sizeof...(Policies) == checkpoint_policies,
                "margin, generator, refresh, queue, mining, aging");
  out.put<std::uint32_t>(sizeof(Scalar));
  out.put<std::uint64_t>(static_cast<std::uint64_t>(dim));
  out.put<std::uint64_t>(static_cast<std::uint64_t>(capacity));
  out.put<std::int64_t>(num_classes);
  out.put<std::uint64_t>(stats.steps);
  out.put<std::uint64_t>(stats.refreshes);
  out.put<std::uint64_t>(stats.insertions);
  out.put<std::uint64_t>(stats.evictions);
  int family = 0;
  (save_policy(out, policy_families[family++], policies), ...);
}

/// Writes a memory's checkpoint: `record(out, slot)` writes the dim scalars of a slot's prototype.
template <class Scalar, class WritePrototype, class... Policies>
std::string write_checkpoint(index_t dim, index_t capacity, label_t num_classes, const Book& book,
                             WritePrototype write_prototype, const Policies&... policies) {
  static_assert(sizeof...(Policies) == checkpoint_policies,
                "margin, generator, refresh, queue, mining, aging");
  ByteWriter out;
  begin_frame(out, checkpoint_magic, checkpoint_version);
  put_memory_header<Scalar>(out, dim, capacity, num_classes, book.stats, policies...);
  out.put<std::uint64_t>(static_cast<std::uint64_t>(book.used));
  for (index_t slot = book.queue.front(); slot >= 0; slot = book.queue.next(slot)) {
    out.put<std::int64_t>(book.label[static_cast<std::size_t>(slot)]);
    out.put<std::uint64_t>(static_cast<std::uint64_t>(slot));
    out.put<std::uint64_t>(book.written[static_cast<std::size_t>(slot)]);
    write_prototype(out, slot);
  }
  end_frame(out);
  return std::move(out.bytes());
}

/// Reads one checkpoint's bytes, using its own length fields to stop at its end. Whatever is
/// malformed is left for parse_checkpoint() to report; reading stops early where the stream ends.
/// (read_checkpoint below turns a stream's exceptions into Error.)
inline std::string read_checkpoint_bytes(std::istream& in, const std::string& source) {
  std::string bytes;
  auto take = [&](std::uint64_t n) {  // in chunks, so a corrupt length cannot allocate wildly
    while (n > 0 && in) {
      const std::size_t chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n, 1 << 20));
      const std::size_t at = bytes.size();
      bytes.resize(at + chunk);
      in.read(&bytes[at], static_cast<std::streamsize>(chunk));
      const auto got = static_cast<std::size_t>(in.gcount());
      bytes.resize(at + got);
      if (got < chunk) return false;
      n -= chunk;
    }
    return static_cast<bool>(in) || n == 0;
  };
  auto number = [&](std::size_t width) -> std::uint64_t {  // the little-endian field just read
    std::uint64_t value = 0;
    for (std::size_t k = 0; k < width; ++k) {
      value |= std::uint64_t{static_cast<unsigned char>(bytes[bytes.size() - width + k])}
               << (8 * k);
    }
    return value;
  };
  if (!take(16) || !has_magic(bytes, checkpoint_magic)) return bytes;
  const std::uint64_t scalar_bytes = number(4);
  const bool without_aging =
      static_cast<unsigned char>(bytes[8]) == checkpoint_version_without_aging && bytes[9] == 0 &&
      bytes[10] == 0 && bytes[11] == 0;  // u32 version
  const int policies = without_aging ? checkpoint_policies - 1 : checkpoint_policies;
  if (!take(8)) return bytes;
  const std::uint64_t dim = number(8);
  if (!take(8 + 8 + 4 * 8)) return bytes;
  for (int policy = 0; policy < policies; ++policy) {
    for (std::size_t width : {4, 4, 8}) {
      if (!take(width) || !take(number(width))) return bytes;
    }
  }
  if (!take(8)) return bytes;
  const std::uint64_t n = number(8);
  // At most 2^32 x 8 + 24 bytes a record: n x that cannot wrap below 2^62 bytes.
  const std::uint64_t record_bytes = 24 + dim * scalar_bytes;
  if (scalar_bytes > 8 || dim > (std::uint64_t{1} << 32) ||
      n > (std::uint64_t{1} << 62) / record_bytes) {
    return bytes;  // parse_checkpoint() reports the corrupt header
  }
  take(n * record_bytes + 4);
  if (in.bad()) fail(source, ": reading failed");
  return bytes;
}

/// read_checkpoint_bytes(), with any exception of the stream turned into an Error naming `source`.
inline std::string read_checkpoint(std::istream& in, const std::string& source) {
  return reading_stream(source, [&] { return read_checkpoint_bytes(in, source); });
}

/// A checkpoint's header, once its structure and checksum hold.
struct CheckpointHeader {
  std::uint32_t scalar_bytes = 0;
  std::uint64_t dim = 0;
  std::uint64_t records = 0;
  Stats stats;
  StoredPolicy policies[checkpoint_policies];
};

/// Checks a checkpoint's structure (sizes, version) and integrity (CRC-32) and reads its header;
/// `in` (a reader over `bytes`) is left at the first record.
inline CheckpointHeader parse_checkpoint(const std::string& bytes, ByteReader& in,
                                         const std::string& source) {
  // 1. Structure, read with bounds checks: a truncated file fails here or on its size below.
  in.need(8, "the magic bytes");
  if (!has_magic(bytes, checkpoint_magic)) {
    fail(source, " is not a protomem checkpoint (its first bytes are not \"PROTOMEM\")");
  }
  in.get<std::uint64_t>("the magic bytes");
  const auto version = in.get<std::uint32_t>("the format version");
  if (version == shard_checkpoint_version) {
    fail(source, " is one shard of a sharded checkpoint (format version ", version,
         "): load the whole set of shard files with load_shards() (Python: load(path))");
  }
  if (version != checkpoint_version && version != checkpoint_version_without_aging) {
    fail(source, " has checkpoint format version ", version, "; this build of protomem reads ",
         "versions ", checkpoint_version_without_aging, " and ", checkpoint_version);
  }
  CheckpointHeader header;
  header.scalar_bytes = in.get<std::uint32_t>("the scalar size");
  header.dim = in.get<std::uint64_t>("dim");
  in.get<std::uint64_t>("capacity");  // informative: any memory large enough may load it
  in.get<std::int64_t>("num_classes");
  header.stats.steps = in.get<std::uint64_t>("steps");
  header.stats.refreshes = in.get<std::uint64_t>("refreshes");
  header.stats.insertions = in.get<std::uint64_t>("insertions");
  header.stats.evictions = in.get<std::uint64_t>("evictions");
  for (StoredPolicy& policy : header.policies) {
    if (version == checkpoint_version_without_aging && &policy == &header.policies[5]) {
      policy = StoredPolicy{"aging", "none", ""};  // version 1 had no Aging policy: NoAging
      continue;
    }
    policy.family = in.get_string("a policy family");
    policy.name = in.get_string("a policy name");
    policy.state = in.get_bytes("a policy state");
  }
  const auto n = in.get<std::uint64_t>("the record count");
  header.records = n;
  if (header.scalar_bytes != 4 && header.scalar_bytes != 8) {
    fail(source, " is corrupt: scalar size ", header.scalar_bytes, " is neither 4 nor 8");
  }
  // Sizes from the file, compared by division so that nothing wraps: every record holds
  // 24 + dim x scalar_bytes bytes, and n of them (and the checksum) must follow the header.
  const std::uint64_t left = bytes.size() - in.offset();
  if (header.dim == 0 || header.dim > (std::uint64_t{1} << 56)) {
    fail(source, " is corrupt: dim ", header.dim, " is not a dimension");
  }
  const std::uint64_t record_bytes = 24 + header.dim * header.scalar_bytes;
  if (left < 4 || n > (left - 4) / record_bytes) {
    fail(source, " is truncated: ", bytes.size(), " bytes where its header announces ", n,
         " records of ", record_bytes, " bytes after byte ", in.offset());
  }
  const std::uint64_t expected = in.offset() + n * record_bytes + 4;
  if (bytes.size() > expected) {
    fail(source, " has ", bytes.size() - expected, " unexpected bytes past its end");
  }
  // 2. Integrity.
  check_frame_crc(bytes, source, "the file");
  return header;
}

/// 3. A checkpoint's compatibility with a memory of Scalar, `dim` and `capacity`.
template <class Scalar>
void check_compatible(const CheckpointHeader& header, index_t dim, index_t capacity,
                      const std::string& source) {
  if (header.scalar_bytes != sizeof(Scalar)) {
    fail(source, " stores ", header.scalar_bytes == 4 ? "float32" : "float64",
         " prototypes; this memory stores ", sizeof(Scalar) == 4 ? "float32" : "float64");
  }
  if (header.dim != static_cast<std::uint64_t>(dim)) {
    fail(source, " has dim ", header.dim, "; this memory has dim ", dim);
  }
  if (header.records > static_cast<std::uint64_t>(capacity)) {
    fail(source, " holds ", header.records, " classes; this memory's capacity is ", capacity);
  }
}

// ---- records: the two ways a memory is filled without steps
// --------------------------------------- load() reads them from a checkpoint (read_records),
// assign() takes them from the caller (book_from_records); each checks every record into a new
// Book, which the memory swaps in with the prototypes (PrototypeMemory::replace_state).

/// A checkpoint's records: the new bookkeeping and record r's prototype (n x dim) and slot.
template <class Scalar>
struct CheckpointRecords {
  Book book;
  std::vector<Scalar> prototypes;
  std::vector<index_t> slots;
};

/// How far from 1 the norm of a loaded prototype may be. A memory normalises in Scalar (error
/// about sqrt(dim) ulps); a float checkpoint of a bf16 memory holds decoded bf16 values, each
/// within 2^-8 of its float, so their norm is within 2^-8 = 0.0039 of 1 (fp16: 2^-11).
template <class Scalar>
constexpr double unit_norm_tolerance = sizeof(Scalar) == 4 ? 1e-2 : 1e-6;

/// Reads and checks the records that follow a checkpoint's header (parse_checkpoint) for a memory
/// of `capacity` slots: labels >= 0, distinct and < num_classes when it is declared (> 0), as
/// assign() requires; slots < n and distinct, steps <= the checkpoint's, finite unit prototypes.
template <class Scalar>
CheckpointRecords<Scalar> read_records(ByteReader& in, const CheckpointHeader& header,
                                       index_t capacity, label_t num_classes,
                                       const std::string& source) {
  const std::uint64_t n = header.records, dim = header.dim;
  const Stats& stats = header.stats;
  const double tolerance = unit_norm_tolerance<Scalar>;
  CheckpointRecords<Scalar> records{Book(capacity), {}, {}};
  Book& book = records.book;
  book.stats = stats;
  book.used = static_cast<index_t>(n);
  records.prototypes.resize(static_cast<std::size_t>(n * dim));
  records.slots.reserve(static_cast<std::size_t>(n));
  for (std::uint64_t r = 0; r < n; ++r) {
    const auto label = in.get<std::int64_t>("a record's label");
    const auto slot = in.get<std::uint64_t>("a record's slot");
    const auto written = in.get<std::uint64_t>("a record's last_written");
    if (label < 0) fail(source, ": record ", r, " has negative label ", label);
    if (num_classes > 0 && label >= num_classes) {
      fail(source, ": record ", r, " has label ", label,
           ", outside the memory's declared range [0, ", num_classes, ") (Config::num_classes)");
    }
    if (slot >= n || book.slot_taken(static_cast<index_t>(slot))) {
      fail(source, ": record ", r, " (label ", label, ") has slot ", slot,
           ", which is out of range or taken twice");
    }
    if (book.find(label) >= 0) fail(source, ": label ", label, " appears in two records");
    if (written > stats.steps) {
      fail(source, ": record ", r, " (label ", label, ") was written at step ", written,
           " after the checkpoint's last step ", stats.steps);
    }
    book.add_record(label, static_cast<index_t>(slot), written);
    Scalar* p = records.prototypes.data() + r * dim;
    for (std::uint64_t k = 0; k < dim; ++k) p[k] = in.get<Scalar>("a prototype value");
    double norm2 = 0;
    for (std::uint64_t k = 0; k < dim; ++k) {
      if (!std::isfinite(p[k])) {
        fail(source, ": the prototype of label ", label, " has a non-finite value");
      }
      norm2 += double(p[k]) * double(p[k]);
    }
    if (!(std::abs(std::sqrt(norm2) - 1.0) <= tolerance)) {
      fail(source, ": the prototype of label ", label, " has norm ", std::sqrt(norm2),
           "; a stored prototype is a unit vector (within ", tolerance, ")");
    }
    records.slots.push_back(static_cast<index_t>(slot));
  }
  return records;
}

/// The bookkeeping of n records given by the caller in eviction order, record r in slot r
/// (PrototypeMemory::assign() states the requirements); throws naming the first bad record.
template <class Scalar>
Book book_from_records(Span<const label_t> labels, MatrixView<const Scalar> prototypes,
                       Span<const std::uint64_t> last_written, std::uint64_t steps,
                       index_t capacity, index_t dim, label_t num_classes) {
  const index_t n = labels.size;
  if (n < 0) fail("assign: labels.size = ", n, " is negative");
  if (prototypes.rows != n || last_written.size != n) {
    fail("assign: ", n, " labels but ", prototypes.rows, " prototype rows and ", last_written.size,
         " last_written steps");
  }
  if (n > capacity) {
    fail("assign: ", n, " records but the memory's capacity is ", capacity);
  }
  if (n > 0 &&
      (labels.data == nullptr || prototypes.data == nullptr || last_written.data == nullptr)) {
    fail("assign: labels, prototypes or last_written has null data for ", n, " records");
  }
  if (n > 0 && prototypes.cols != dim) {
    fail("assign: prototypes.cols = ", prototypes.cols, " but the memory's dim = ", dim);
  }
  if (n > 0 && prototypes.row_stride < prototypes.cols) {
    fail("assign: prototypes.row_stride = ", prototypes.row_stride,
         " < prototypes.cols = ", prototypes.cols);
  }
  const double tolerance = std::sqrt(double(std::numeric_limits<Scalar>::epsilon()));
  Book book(capacity);
  book.stats.steps = steps;
  book.stats.insertions = static_cast<std::uint64_t>(n);
  book.used = n;
  for (index_t r = 0; r < n; ++r) {
    const label_t label = labels[r];
    if (label < 0) fail("assign: labels[", r, "] = ", label, " is negative");
    if (num_classes > 0 && label >= num_classes) {
      fail("assign: labels[", r, "] = ", label, " is outside the declared range [0, ", num_classes,
           ")");
    }
    if (book.find(label) >= 0) {
      fail("assign: labels[", r, "] = ", label, " appears twice");
    }
    if (last_written[r] > steps) {
      fail("assign: last_written[", r, "] = ", last_written[r], " (label ", label,
           ") is after step ", steps);
    }
    const Scalar* p = prototypes.data + r * prototypes.row_stride;
    double norm2 = 0;
    for (index_t k = 0; k < dim; ++k) {
      if (!std::isfinite(p[k])) {
        fail("assign: prototypes(", r, ", ", k, ") = ", p[k], " (label ", label, ") is not finite");
      }
      norm2 += double(p[k]) * double(p[k]);
    }
    if (!(std::fabs(std::sqrt(norm2) - 1.0) <= tolerance)) {
      fail("assign: prototype ", r, " (label ", label, ") has norm ", std::sqrt(norm2),
           "; prototypes must have unit norm (within ", tolerance, ")");
    }
    book.add_record(label, r, last_written[r]);
  }
  return book;
}

// ---- shard checkpoint, version 3: one rank's shard of a sharded memory ---------------------
//   "PROTOMEM" | u32 version 3 | the version-2 fields up to the policies (scalar bytes, dim,
//   capacity, num_classes, steps, refreshes, insertions, evictions, 6 x policy)
//   | u64 save id (the same in every shard of one save) | u32 rank r | u32 world size W
//   | u64 used (records over all W shards) | i64 next ticket
//   | u64 n (this shard's records: the global slots g < used with g % W == r)
//   | n x record (i64 label, u64 global slot, u64 last_written, i64 ticket, dim scalars), ascending
//     ticket (the memory's eviction order is ascending ticket over all shards)
//   | u32 CRC-32 (zlib) of every byte before it
// Everything up to n is replicated: every shard of one save holds the same values there, but r.
// A reader streams a shard (ShardReader): it holds one record at a time and checks the CRC-32 at
// the end, so W shards load into W' ranks each holding only its own prototypes.

/// The header of one shard file.
struct ShardHeader {
  std::uint32_t scalar_bytes = 0;
  std::uint64_t dim = 0, capacity = 0;
  std::int64_t num_classes = 0;
  Stats stats;
  StoredPolicy policies[checkpoint_policies];
  std::uint64_t save_id = 0;
  std::uint32_t rank = 0, world_size = 1;
  std::uint64_t used = 0;
  std::int64_t next_ticket = 0;
  std::uint64_t records = 0;
};

/// One record of a shard file (a global slot; the eviction order is ascending ticket).
struct ShardFileRecord {
  label_t label = -1;
  std::uint64_t slot = 0;
  std::uint64_t last_written = 0;
  std::int64_t ticket = -1;
};

/// The global slots g < used with g % W == r: how many records shard r of W holds.
inline std::uint64_t shard_record_count(std::uint64_t used, std::uint64_t rank,
                                        std::uint64_t world_size) {
  return used > rank ? (used - rank - 1) / world_size + 1 : 0;
}

/// Writes one rank's shard: `records` in ascending ticket, `write_prototype(out, i)` writes the dim
/// scalars of records[i]. `header`'s policies and records are taken from the arguments.
template <class Scalar, class WritePrototype, class... Policies>
std::string write_shard_checkpoint(const ShardHeader& header,
                                   const std::vector<ShardFileRecord>& records,
                                   WritePrototype write_prototype, const Policies&... policies) {
  ByteWriter out;
  begin_frame(out, checkpoint_magic, shard_checkpoint_version);
  put_memory_header<Scalar>(out, static_cast<index_t>(header.dim),
                            static_cast<index_t>(header.capacity), header.num_classes,
                            header.stats, policies...);
  out.put<std::uint64_t>(header.save_id);
  out.put<std::uint32_t>(header.rank);
  out.put<std::uint32_t>(header.world_size);
  out.put<std::uint64_t>(header.used);
  out.put<std::int64_t>(header.next_ticket);
  out.put<std::uint64_t>(static_cast<std::uint64_t>(records.size()));
  for (std::size_t i = 0; i < records.size(); ++i) {
    out.put<std::int64_t>(records[i].label);
    out.put<std::uint64_t>(records[i].slot);
    out.put<std::uint64_t>(records[i].last_written);
    out.put<std::int64_t>(records[i].ticket);
    write_prototype(out, i);
  }
  end_frame(out);
  return std::move(out.bytes());
}

/// Reads a framed state from a stream field by field, keeping the CRC-32 of what it has read, so
/// that a shard is checked without ever holding all its bytes. Truncation, a checksum mismatch and
/// trailing bytes are protomem::Error naming `source`.
class ShardReader {
 public:
  ShardReader(std::istream& in, std::string source) : in_(&in), source_(std::move(source)) {}

  const std::string& source() const { return source_; }

  void read(char* out, std::size_t n, const char* what) {
    in_->read(out, static_cast<std::streamsize>(n));
    const auto got = static_cast<std::size_t>(in_->gcount());
    if (got < n) {
      if (in_->bad()) fail(source_, ": reading failed at byte ", offset_ + got);
      fail(source_, " is truncated: it ends at byte ", offset_ + got, ", in ", what);
    }
    crc_ = crc32(out, n, crc_);
    offset_ += n;
  }

  template <class T>
  T get(const char* what) {
    char bytes[sizeof(T)];
    read(bytes, sizeof(T), what);
    ByteReader field(bytes, sizeof(T), source_);
    return field.get<T>(what);
  }

  /// A u32- (`wide`: u64-) length-prefixed string, read in chunks: a corrupt length ends in
  /// "truncated" before it can allocate much.
  std::string get_string(const char* what, bool wide = false) {
    const std::uint64_t n = wide ? get<std::uint64_t>(what) : get<std::uint32_t>(what);
    std::string s;
    for (std::uint64_t at = 0; at < n;) {
      const auto chunk = static_cast<std::size_t>(std::min<std::uint64_t>(n - at, 1 << 20));
      s.resize(static_cast<std::size_t>(at) + chunk);
      read(&s[static_cast<std::size_t>(at)], chunk, what);
      at += chunk;
    }
    return s;
  }

  /// Bytes read so far.
  std::uint64_t offset() const { return offset_; }

  /// Reads the stored CRC-32 and checks it against the bytes read, then (`whole`: a file) that
  /// nothing follows; a stream may hold more after the shard, as after a checkpoint.
  void finish(bool whole = true) {
    const std::uint32_t computed = crc_;
    const auto stored = get<std::uint32_t>("the checksum");
    if (computed != stored) {
      fail(source_, " is corrupt: CRC-32 is ", computed, " but the file says ", stored);
    }
    if (whole && in_->peek() != std::char_traits<char>::eof()) {
      fail(source_, " has unexpected bytes past its end (byte ", offset_, ")");
    }
  }

 private:
  std::istream* in_;
  std::string source_;
  std::uint32_t crc_ = 0;
  std::uint64_t offset_ = 0;
};

/// Reads and checks a shard's header (structure only; the CRC-32 is checked by finish()).
inline ShardHeader read_shard_header(ShardReader& in) {
  const std::string& source = in.source();
  char magic[8];
  in.read(magic, 8, "the magic bytes");
  if (std::string(magic, 8) != std::string(checkpoint_magic, 8)) {
    fail(source, " is not a protomem checkpoint (its first bytes are not \"PROTOMEM\")");
  }
  const auto version = in.get<std::uint32_t>("the format version");
  if (version == checkpoint_version || version == checkpoint_version_without_aging) {
    fail(source, " is a single-process checkpoint (format version ", version,
         "), not a shard: load it with load()");
  }
  if (version != shard_checkpoint_version) {
    fail(source, " has checkpoint format version ", version, "; a shard has version ",
         shard_checkpoint_version);
  }
  ShardHeader h;
  h.scalar_bytes = in.get<std::uint32_t>("the scalar size");
  h.dim = in.get<std::uint64_t>("dim");
  h.capacity = in.get<std::uint64_t>("capacity");
  h.num_classes = in.get<std::int64_t>("num_classes");
  h.stats.steps = in.get<std::uint64_t>("steps");
  h.stats.refreshes = in.get<std::uint64_t>("refreshes");
  h.stats.insertions = in.get<std::uint64_t>("insertions");
  h.stats.evictions = in.get<std::uint64_t>("evictions");
  for (StoredPolicy& policy : h.policies) {
    policy.family = in.get_string("a policy family");
    policy.name = in.get_string("a policy name");
    policy.state = in.get_string("a policy state", true);
  }
  h.save_id = in.get<std::uint64_t>("the save id");
  h.rank = in.get<std::uint32_t>("the rank");
  h.world_size = in.get<std::uint32_t>("the world size");
  h.used = in.get<std::uint64_t>("the stored class count");
  h.next_ticket = in.get<std::int64_t>("the next ticket");
  h.records = in.get<std::uint64_t>("the record count");
  if (h.scalar_bytes != 4 && h.scalar_bytes != 8) {
    fail(source, " is corrupt: scalar size ", h.scalar_bytes, " is neither 4 nor 8");
  }
  if (h.dim == 0 || h.dim > (std::uint64_t{1} << 32)) {
    fail(source, " is corrupt: dim ", h.dim, " is not a dimension");
  }
  if (h.world_size == 0 || h.rank >= h.world_size) {
    fail(source, " is corrupt: rank ", h.rank, " of world size ", h.world_size);
  }
  if (h.used > h.capacity || h.next_ticket < 0 ||
      static_cast<std::uint64_t>(h.next_ticket) < h.used) {
    fail(source, " is corrupt: ", h.used, " stored classes, capacity ", h.capacity,
         ", next ticket ", h.next_ticket);
  }
  const std::uint64_t expected = shard_record_count(h.used, h.rank, h.world_size);
  if (h.records != expected) {
    fail(source, " is corrupt: shard ", h.rank, " of ", h.world_size, " holds ", h.records,
         " records, but ", expected, " of the ", h.used, " stored classes live on it");
  }
  return h;
}

/// A shard's compatibility with a memory of Scalar, `dim` and `capacity`.
template <class Scalar>
void check_shard_compatible(const ShardHeader& h, index_t dim, index_t capacity,
                            const std::string& source) {
  if (h.scalar_bytes != sizeof(Scalar)) {
    fail(source, " stores ", h.scalar_bytes == 4 ? "float32" : "float64",
         " prototypes; this memory stores ", sizeof(Scalar) == 4 ? "float32" : "float64");
  }
  if (h.dim != static_cast<std::uint64_t>(dim)) {
    fail(source, " has dim ", h.dim, "; this memory has dim ", dim);
  }
  if (h.used > static_cast<std::uint64_t>(capacity)) {
    fail(source, " holds ", h.used, " classes; this memory's capacity is ", capacity);
  }
}

/// Reads one record of shard `h` into `prototype` (dim scalars) and checks it: the global slot is
/// the shard's and < used, the label >= 0 (and < num_classes when declared), last_written <= the
/// step count, the ticket < the next ticket, and the prototype a finite unit vector.
template <class Scalar>
ShardFileRecord read_shard_record(ShardReader& in, const ShardHeader& h, Scalar* prototype,
                                  std::uint64_t r, label_t num_classes) {
  const std::string& source = in.source();
  ShardFileRecord record;
  record.label = in.get<std::int64_t>("a record's label");
  record.slot = in.get<std::uint64_t>("a record's slot");
  record.last_written = in.get<std::uint64_t>("a record's last_written");
  record.ticket = in.get<std::int64_t>("a record's ticket");
  const label_t label = record.label;
  if (label < 0) fail(source, ": record ", r, " has negative label ", label);
  if (num_classes > 0 && label >= num_classes) {
    fail(source, ": record ", r, " has label ", label,
         ", outside the memory's declared range [0, ", num_classes, ") (Config::num_classes)");
  }
  if (record.slot >= h.used || record.slot % h.world_size != h.rank) {
    fail(source, ": record ", r, " (label ", label, ") has global slot ", record.slot,
         ", which is not on shard ", h.rank, " of ", h.world_size, " below ", h.used);
  }
  if (record.last_written > h.stats.steps) {
    fail(source, ": record ", r, " (label ", label, ") was written at step ", record.last_written,
         " after the checkpoint's last step ", h.stats.steps);
  }
  if (record.ticket < 0 || record.ticket >= h.next_ticket) {
    fail(source, ": record ", r, " (label ", label, ") has ticket ", record.ticket,
         ", outside [0, ", h.next_ticket, ")");
  }
  double norm2 = 0;
  for (std::uint64_t k = 0; k < h.dim; ++k) {
    prototype[k] = in.get<Scalar>("a prototype value");
    if (!std::isfinite(prototype[k])) {
      fail(source, ": the prototype of label ", label, " has a non-finite value");
    }
    norm2 += double(prototype[k]) * double(prototype[k]);
  }
  const double tolerance = unit_norm_tolerance<Scalar>;
  if (!(std::abs(std::sqrt(norm2) - 1.0) <= tolerance)) {
    fail(source, ": the prototype of label ", label, " has norm ", std::sqrt(norm2),
         "; a stored prototype is a unit vector (within ", tolerance, ")");
  }
  return record;
}

/// What a set of shard files holds once every file has been read and checked.
struct ShardSet {
  ShardHeader header;  ///< the replicated state (rank: that of the first file)
  std::vector<ShardFileRecord> records;  ///< all records, ascending ticket (the eviction order)
};

/// The quoted path of each file, for messages.
inline std::string describe_paths(const std::vector<std::string>& paths) {
  std::string text;
  for (const std::string& p : paths) text += (text.empty() ? "" : ", ") + quoted_path(p);
  return text;
}

/// Streams the shard files of one save (`paths`, any order, one per rank of the world size that
/// wrote them) for a memory of Scalar, `dim`, `capacity` and `num_classes`: `keep(header, record,
/// prototype)` is called for each checked record, one file at a time (it keeps what it needs: one
/// rank keeps the prototypes of its slots). Throws protomem::Error naming the file and the value
/// for a missing, unreadable, truncated or corrupt file, a file of another save, world size or
/// memory, a rank twice or the wrong number of files, labels or slots twice. Memory: one record's
/// prototype plus O(n) integers; each file's CRC-32 is checked as it streams, so a corrupt file
/// fails on the first check its bytes break (a record's, or at the end the checksum).
template <class Scalar, class Keep>
ShardSet read_shard_set(const std::vector<std::string>& paths, index_t dim, index_t capacity,
                        label_t num_classes, Keep keep) {
  if (paths.empty()) fail("load_shards: no shard files given");
  ShardSet set;
  std::vector<char> rank_seen, slot_seen;
  std::vector<Scalar> prototype(static_cast<std::size_t>(dim));
  for (std::size_t f = 0; f < paths.size(); ++f) {
    const std::string& path = paths[f];
    const std::string source = quoted_path(path);
    std::error_code error;
    if (!std::filesystem::is_regular_file(path, error)) {
      fail("load_shards: ", source, error || !std::filesystem::exists(path, error)
                                       ? " does not exist (a missing shard?)"
                                       : " is not a regular file",
           "; the set given is ", describe_paths(paths));
    }
    std::ifstream in(path, std::ios::binary);
    if (!in) fail("load_shards: cannot open ", source);
    ShardReader reader(in, source);
    reading_stream(source, [&] {
      const ShardHeader h = read_shard_header(reader);
      check_shard_compatible<Scalar>(h, dim, capacity, source);
      if (f == 0) {
        set.header = h;
        if (paths.size() != h.world_size) {
          fail("load_shards: ", source, " is shard ", h.rank, " of a save by ", h.world_size,
               " ranks, but ", paths.size(), " files were given: ", describe_paths(paths));
        }
        rank_seen.assign(h.world_size, 0);
        slot_seen.assign(static_cast<std::size_t>(h.used), 0);
        set.records.reserve(static_cast<std::size_t>(h.used));
      } else {
        const ShardHeader& first = set.header;
        const std::string of_first = " (" + quoted_path(paths[0]) + " has ";
        if (h.save_id != first.save_id) {
          fail("load_shards: ", source, " is of another save than ", quoted_path(paths[0]),
               ": save id ", h.save_id, " and ", first.save_id, "; shards of two saves never mix");
        }
        if (h.world_size != first.world_size) {
          fail("load_shards: ", source, " has world size ", h.world_size, of_first,
               first.world_size, ")");
        }
        bool same = h.capacity == first.capacity && h.num_classes == first.num_classes &&
                    h.used == first.used && h.next_ticket == first.next_ticket &&
                    h.stats.steps == first.stats.steps &&
                    h.stats.refreshes == first.stats.refreshes &&
                    h.stats.insertions == first.stats.insertions &&
                    h.stats.evictions == first.stats.evictions;
        for (int p = 0; p < checkpoint_policies; ++p) {
          same = same && h.policies[p].family == first.policies[p].family &&
                 h.policies[p].name == first.policies[p].name &&
                 h.policies[p].state == first.policies[p].state;
        }
        if (!same) {
          fail("load_shards: ", source, " disagrees with ", quoted_path(paths[0]),
               " on the replicated state (steps ", h.stats.steps, " vs ", first.stats.steps,
               ", stored classes ", h.used, " vs ", first.used, ", or the counters or policies)",
               " although both are of save ", h.save_id);
        }
      }
      if (rank_seen[h.rank]) {
        fail("load_shards: ", source, " is shard ", h.rank, " of ", h.world_size,
             ", which another file of the set is too: ", describe_paths(paths));
      }
      rank_seen[h.rank] = 1;
      for (std::uint64_t r = 0; r < h.records; ++r) {
        const ShardFileRecord record =
            read_shard_record<Scalar>(reader, h, prototype.data(), r, num_classes);
        if (slot_seen[static_cast<std::size_t>(record.slot)]) {
          fail(source, ": record ", r, " (label ", record.label, ") has global slot ",
               record.slot, ", taken twice");
        }
        slot_seen[static_cast<std::size_t>(record.slot)] = 1;
        set.records.push_back(record);
        keep(static_cast<const ShardHeader&>(h), record,
             static_cast<const Scalar*>(prototype.data()));
      }
      reader.finish();
      return 0;
    });
  }
  // Every rank's file was given (as many files as ranks, no rank twice) and held its count of
  // records, so the slots are exactly 0 .. used - 1. Labels and tickets must be distinct.
  std::sort(set.records.begin(), set.records.end(),
            [](const ShardFileRecord& a, const ShardFileRecord& b) { return a.ticket < b.ticket; });
  for (std::size_t i = 1; i < set.records.size(); ++i) {
    if (set.records[i].ticket == set.records[i - 1].ticket) {
      fail("load_shards: labels ", set.records[i - 1].label, " and ", set.records[i].label,
           " have the same ticket ", set.records[i].ticket, " in ", describe_paths(paths));
    }
  }
  std::vector<label_t> labels(set.records.size());
  for (std::size_t i = 0; i < labels.size(); ++i) labels[i] = set.records[i].label;
  std::sort(labels.begin(), labels.end());
  const auto twice = std::adjacent_find(labels.begin(), labels.end());
  if (twice != labels.end()) {
    fail("load_shards: label ", *twice, " is stored twice in ", describe_paths(paths));
  }
  return set;
}

}  // namespace protomem::detail
