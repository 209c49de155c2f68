// eplb_bench_mpi_bandwidth: expert migration over eplb's MPI transport
// against MPI's own point-to-point bandwidth, in the same run. Runs under
// mpirun with 2 processes:
//
//   mpirun -np 2 eplb_bench_mpi_bandwidth [--sizes 256K,1M,4M,16M,44M]
//       [--total-mib 256] [--reps 5] [--tensors 1] [--both]
//       [--max-in-flight 16] [--chunk-bytes 4M] [--two-sided] [--json]
//
// For each expert size it moves a batch of experts (enough to total
// --total-mib) from rank 0's slots to rank 1's staging buffers (--both: each
// rank to the other at once), three ways, in turn, --reps times each:
//
//   - eplb: MpiJob::CreateTransport's Transport::Start, waiting until the
//     batch is Done(), then the receiver's verification as the migration
//     engine does it (every transfer's landed_checksum against its
//     source_checksum); the sender's checksum and the read-back of what
//     landed happen inside the transport, while the data moves. Every other
//     chunk is written one-sided (MpiTransportOptions::one_sided), unless
//     --two-sided;
//   - eplb, checksum known: the same, but each transfer carries its
//     expert's checksum (Transfer::source_checksum), as the migration engine
//     gives it once an earlier transfer of the expert verified: the sender
//     reads its bytes once (the copy); the receiver still reads back and
//     checks everything that landed;
//   - MPI: MPI_Isend / MPI_Irecv of the same bytes in the same messages (the
//     transport's chunks, in the same order) through a window of the same
//     number of requests, completed with MPI_Waitsome: no checksum, no
//     thread hand-off. MPI's own bandwidth for that traffic.
//   - MPI split: the same, with every other chunk from one process to the
//     other written by MPI_Put (then MPI_Win_flush and an empty message in
//     its place) into the receiver's staging buffers, exposed in a dynamic
//     window: the data path of eplb's one-sided chunks, raw, to show what
//     the transport's checks and thread cost on it.
//
// Each run starts and ends with a barrier of both processes; its bytes over
// its time is its bandwidth (GB/s, 10^9 bytes per second, every direction
// counted). The table reports the medians and eplb's share of MPI's. The
// staging buffers are cleared before every run and checked afterwards
// (untimed) against the checksums the senders computed before the runs;
// any mismatch, or a failed batch, exits 1.
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "eplb/mpi.h"
#include "eplb/transport.h"
#include "eplb/weights.h"

namespace {

// The expert weights of one rank: `experts` slots (layer 0) and as many
// staging buffers, each expert `tensors` tensors in one buffer (the last
// tensor takes the remainder of the size), every buffer in one pool, which
// Regions() names (as an engine with pooled expert memory would).
class BenchWeights final : public eplb::ExpertWeights {
 public:
  BenchWeights(int rank, int experts, int tensors, int64_t expert_bytes)
      : rank_(rank), tensors_(tensors) {
    const auto bytes = static_cast<size_t>(expert_bytes);
    const size_t each = bytes / static_cast<size_t>(tensors) / 8 * 8;
    for (int x = 0; x < tensors; ++x) {
      offsets_.push_back(static_cast<size_t>(x) * each);
      sizes_.push_back(x + 1 < tensors ? each : bytes - offsets_.back());
    }
    pool_bytes_ = 2 * static_cast<size_t>(experts) * bytes;
    pool_.reset(new std::byte[pool_bytes_]);
    for (int s = 0; s < experts; ++s) {
      slots_.push_back(pool_.get() + 2 * static_cast<size_t>(s) * bytes);
      Fill(s, {slots_.back(), bytes});
      staging_.push_back(slots_.back() + bytes);
      std::memset(staging_.back(), 0, bytes);  // Faults the pages in.
    }
    bytes_ = bytes;
  }

  bool Hosts(int rank) const override { return rank == rank_; }
  int num_tensors() const override { return tensors_; }
  std::span<const std::byte> Slot(int rank, int layer, int slot,
                                  int tensor) const override {
    if (rank != rank_ || layer != 0 || slot < 0 ||
        slot >= static_cast<int>(slots_.size())) {
      return {};
    }
    return {slots_[slot] + offsets_[tensor], sizes_[tensor]};
  }
  int staging_per_rank() const override {
    return static_cast<int>(staging_.size());
  }
  std::span<std::byte> Staging(int rank, int index, int tensor) override {
    if (rank != rank_ || index < 0 ||
        index >= static_cast<int>(staging_.size())) {
      return {};
    }
    return {staging_[index] + offsets_[tensor], sizes_[tensor]};
  }
  void CommitStaging(int rank, int index, int layer, int slot) override {
    if (rank != rank_ || layer != 0) return;
    std::swap(staging_[index], slots_[slot]);
  }
  std::vector<std::span<std::byte>> Regions(int rank) override {
    if (rank != rank_) return {};
    return {{pool_.get(), pool_bytes_}};
  }

  void ClearStaging() {
    for (std::byte* s : staging_) std::memset(s, 0, bytes_);
  }

 private:
  // A pattern of (rank, slot): splitmix64, 8 bytes at a time.
  void Fill(int slot, std::span<std::byte> out) const {
    uint64_t x = (static_cast<uint64_t>(rank_) << 32) ^
                 static_cast<uint64_t>(slot) ^ 0x2545f4914f6cdd1dULL;
    size_t i = 0;
    for (; i + 8 <= out.size(); i += 8) {
      uint64_t z = (x += 0x9e3779b97f4a7c15ULL);
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      z ^= z >> 31;
      std::memcpy(out.data() + i, &z, 8);
    }
    for (; i < out.size(); ++i) out[i] = std::byte{0x5a};
  }

  int rank_;
  int tensors_;
  size_t bytes_ = 0;
  std::vector<size_t> offsets_, sizes_;
  std::unique_ptr<std::byte[]> pool_;
  size_t pool_bytes_ = 0;
  std::vector<std::byte*> slots_, staging_;
};

struct Flags {
  std::string sizes = "256K,1M,4M,16M,44M";
  int64_t total_mib = 256;
  int reps = 5;
  int tensors = 1;
  bool both = false;
  bool two_sided = false;
  int max_in_flight = 16;
  std::string chunk = "4M";
  bool json = false;
};

// "256K", "1M", "44MiB", "1G" or plain bytes; -1 when malformed.
int64_t ParseBytes(const std::string& s) {
  size_t end = 0;
  int64_t v = 0;
  try {
    v = std::stoll(s, &end);
  } catch (...) {
    return -1;
  }
  std::string unit = s.substr(end);
  if (unit.ends_with("iB") || unit.ends_with("ib")) {
    unit.resize(unit.size() - 2);
  }
  if (unit.empty()) return v;
  if (unit.size() != 1) return -1;
  switch (unit[0]) {
    case 'K':
    case 'k':
      return v << 10;
    case 'M':
    case 'm':
      return v << 20;
    case 'G':
    case 'g':
      return v << 30;
    default:
      return -1;
  }
}

std::string FormatBytes(int64_t b) {
  if (b % (1 << 20) == 0) return std::to_string(b >> 20) + " MiB";
  if (b % (1 << 10) == 0) return std::to_string(b >> 10) + " KiB";
  return std::to_string(b) + " B";
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

struct Run {
  double seconds = 0;
  double transfer_seconds = 0;  // eplb: from Start to Done.
  double verify_seconds = 0;    // eplb: the receiver's verification.
};

class Bench {
 public:
  Bench(eplb::MpiJob& job, const Flags& f, int64_t chunk_bytes)
      : job_(job), f_(f), chunk_(static_cast<size_t>(chunk_bytes)) {
    MPI_Comm_dup(MPI_COMM_WORLD, &comm_);
  }
  ~Bench() {
    FreeWindow();
    MPI_Comm_free(&comm_);
  }

  // Sets up one expert size; false on failure (reported).
  bool Setup(int64_t expert_bytes) {
    const int me = job_.rank();
    const int64_t total = f_.total_mib << 20;
    experts_ = static_cast<int>(
        std::max<int64_t>(2, (total + expert_bytes - 1) / expert_bytes));
    FreeWindow();      // It holds the last size's buffers.
    weights_.reset();  // Free the last size's buffers first.
    weights_ =
        std::make_unique<BenchWeights>(me, experts_, f_.tensors, expert_bytes);
    transfers_.clear();
    for (int i = 0; i < experts_; ++i) {
      for (int src = 0; src < 2; ++src) {
        if (src == 1 && !f_.both) continue;
        eplb::Transfer t;
        t.layer = 0;
        t.expert = i;
        t.src_rank = src;
        t.src_slot = i;
        t.dst_rank = 1 - src;
        t.dst_slot = i;
        t.staging = i;
        t.real_bytes = expert_bytes;
        transfers_.push_back(t);
      }
    }
    batch_bytes_ = expert_bytes * static_cast<int64_t>(transfers_.size());
    known_transfers_ = transfers_;
    // The checksum each received expert must have: its sender's, exchanged
    // before any run.
    std::vector<uint64_t> mine(static_cast<size_t>(experts_));
    std::vector<uint64_t> peer(static_cast<size_t>(experts_));
    for (int i = 0; i < experts_; ++i) {
      mine[i] = eplb::SlotChecksum(*weights_, me, 0, i);
    }
    MPI_Sendrecv(mine.data(), experts_, MPI_UINT64_T, 1 - me, 7, peer.data(),
                 experts_, MPI_UINT64_T, 1 - me, 7, comm_, MPI_STATUS_IGNORE);
    expected_.assign(transfers_.size(), 0);
    for (eplb::Transfer& t : known_transfers_) {
      if (t.src_rank == me) t.source_checksum = mine[t.src_slot];
    }
    for (size_t j = 0; j < transfers_.size(); ++j) {
      if (transfers_[j].dst_rank == me) {
        expected_[j] = peer[static_cast<size_t>(transfers_[j].src_slot)];
      }
    }
    // The split reference's window over this process's pool, and the
    // peer's pool address (the two pools are laid out alike).
    std::span<std::byte> pool = weights_->Regions(me)[0];
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN);
    int ok =
        MPI_Win_create_dynamic(MPI_INFO_NULL, comm_, &window_) == MPI_SUCCESS &&
                window_ != MPI_WIN_NULL
            ? 1
            : 0;
    MPI_Comm_set_errhandler(comm_, MPI_ERRORS_ARE_FATAL);
    if (ok == 1) {
      MPI_Win_set_errhandler(window_, MPI_ERRORS_RETURN);
      ok = MPI_Win_attach(window_, pool.data(),
                          static_cast<MPI_Aint>(pool.size())) == MPI_SUCCESS
               ? 1
               : 0;
    }
    MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm_);
    // Without it on both (no single-copy shared memory, say), no split;
    // a window made on one side only is left unfreed (freeing is
    // collective).
    if (ok == 0) window_ = MPI_WIN_NULL;
    MPI_Aint mine_base = 0, peer_base = 0;
    MPI_Get_address(pool.data(), &mine_base);
    MPI_Sendrecv(&mine_base, 1, MPI_AINT, 1 - me, 8, &peer_base, 1, MPI_AINT,
                 1 - me, 8, comm_, MPI_STATUS_IGNORE);
    split_ = ok == 1;
    if (split_) MPI_Win_lock_all(MPI_MODE_NOCHECK, window_);
    // The messages of the reference: the transport's, less the checksums;
    // in the split, every other chunk each way is put.
    messages_.clear();
    int sent = 0, received = 0;
    for (const eplb::Transfer& t : transfers_) {
      const bool send = t.src_rank == me;
      if (!send && t.dst_rank != me) continue;
      for (int x = 0; x < weights_->num_tensors(); ++x) {
        std::byte* data = send
                              ? const_cast<std::byte*>(
                                    weights_->Slot(me, 0, t.src_slot, x).data())
                              : weights_->Staging(me, t.staging, x).data();
        const size_t bytes = send ? weights_->Slot(me, 0, t.src_slot, x).size()
                                  : weights_->Staging(me, t.staging, x).size();
        // Where the chunk lands on the receiver, as an address there.
        const std::byte* lands = weights_->Staging(me, t.staging, x).data();
        for (size_t at = 0; at < bytes; at += chunk_) {
          const bool put = ((send ? sent++ : received++) % 2) == 1;
          messages_.push_back(
              {send, send ? t.dst_rank : t.src_rank, data + at,
               static_cast<int>(std::min(chunk_, bytes - at)), put,
               MPI_Aint_add(peer_base, (lands - pool.data()) +
                                           static_cast<MPI_Aint>(at))});
        }
      }
    }
    return true;
  }

  // One eplb run: Start, Done, the receiver's verification; `known`: the
  // senders are given their experts' checksums.
  Run Eplb(eplb::Transport& transport, bool known) {
    const int me = job_.rank();
    weights_->ClearStaging();
    MPI_Barrier(comm_);
    const double t0 = MPI_Wtime();
    auto batch =
        transport.Start(known ? known_transfers_ : transfers_, weights_.get());
    if (!batch.ok()) {
      Fail("Transport::Start: " + batch.status().ToString());
      MPI_Barrier(comm_);
      return {};
    }
    (*batch)->Wait();
    const double t1 = MPI_Wtime();
    if (!(*batch)->Done() || !(*batch)->result().ok()) {
      Fail("the batch failed: " + (*batch)->result().ToString());
    }
    std::vector<uint64_t> got(transfers_.size(), 0);
    for (size_t j = 0; j < transfers_.size(); ++j) {
      const eplb::Transfer& t = transfers_[j];
      if (t.dst_rank != me) continue;
      got[j] = (*batch)->source_checksum(j);
      if ((*batch)->landed_checksum(j) != got[j]) ++mismatches_;
    }
    const double t2 = MPI_Wtime();
    MPI_Barrier(comm_);
    const double t3 = MPI_Wtime();
    // Untimed: the checksums the transport carried are the senders', and
    // what the staging buffers hold now matches them.
    for (size_t j = 0; j < transfers_.size(); ++j) {
      const eplb::Transfer& t = transfers_[j];
      if (t.dst_rank != me) continue;
      if (got[j] != expected_[j] ||
          eplb::StagingChecksum(*weights_, me, t.staging) != expected_[j]) {
        ++mismatches_;
      }
    }
    return {t3 - t0, t1 - t0, t2 - t1};
  }

  // One reference run: the same messages, raw, through a window; `split`:
  // every other chunk each way put instead of sent.
  Run Mpi(bool split = false) {
    const int me = job_.rank();
    weights_->ClearStaging();
    const size_t window = static_cast<size_t>(f_.max_in_flight);
    std::vector<MPI_Request> requests(window, MPI_REQUEST_NULL);
    std::vector<int> done(window);
    MPI_Barrier(comm_);
    const double t0 = MPI_Wtime();
    size_t next = 0;
    size_t active = 0;
    while (next < messages_.size() || active > 0) {
      for (size_t s = 0; s < window && next < messages_.size(); ++s) {
        if (requests[s] != MPI_REQUEST_NULL) continue;
        const Message& m = messages_[next++];
        if (split && m.put && m.send) {
          MPI_Put(m.data, m.bytes, MPI_BYTE, m.peer, m.target, m.bytes,
                  MPI_BYTE, window_);
          MPI_Win_flush(m.peer, window_);
          MPI_Isend(&note_, 0, MPI_BYTE, m.peer, 1, comm_, &requests[s]);
        } else if (split && m.put) {
          MPI_Irecv(&note_, 0, MPI_BYTE, m.peer, 1, comm_, &requests[s]);
        } else if (m.send) {
          MPI_Isend(m.data, m.bytes, MPI_BYTE, m.peer, 1, comm_, &requests[s]);
        } else {
          MPI_Irecv(m.data, m.bytes, MPI_BYTE, m.peer, 1, comm_, &requests[s]);
        }
        ++active;
      }
      int completed = 0;
      MPI_Waitsome(static_cast<int>(window), requests.data(), &completed,
                   done.data(), MPI_STATUSES_IGNORE);
      if (completed != MPI_UNDEFINED) active -= static_cast<size_t>(completed);
    }
    MPI_Barrier(comm_);
    const double t1 = MPI_Wtime();
    // Untimed: what landed is what was sent.
    for (size_t j = 0; j < transfers_.size(); ++j) {
      const eplb::Transfer& t = transfers_[j];
      if (t.dst_rank != me) continue;
      if (eplb::StagingChecksum(*weights_, me, t.staging) != expected_[j]) {
        ++mismatches_;
      }
    }
    return {t1 - t0, t1 - t0, 0};
  }

  // Whether the split reference runs (this MPI made its window).
  bool split() const { return split_; }
  int experts() const { return experts_; }
  int64_t batch_bytes() const { return batch_bytes_; }
  int64_t mismatches() const { return mismatches_; }
  bool failed() const { return failed_; }

 private:
  struct Message {
    bool send;
    int peer;
    std::byte* data;
    int bytes;
    bool put;         // In the split: written by MPI_Put.
    MPI_Aint target;  // Where a put lands in the receiver.
  };
  void FreeWindow() {
    if (window_ == MPI_WIN_NULL) return;
    if (split_) MPI_Win_unlock_all(window_);
    MPI_Win_free(&window_);  // Collective; its attached pool goes with it.
    split_ = false;
  }
  void Fail(const std::string& what) {
    std::fprintf(stderr, "eplb_bench_mpi_bandwidth: rank %d: %s\n", job_.rank(),
                 what.c_str());
    failed_ = true;
  }

  eplb::MpiJob& job_;
  const Flags& f_;
  size_t chunk_;
  MPI_Comm comm_;
  int experts_ = 0;
  int64_t batch_bytes_ = 0;
  std::unique_ptr<BenchWeights> weights_;
  std::vector<eplb::Transfer> transfers_;
  std::vector<eplb::Transfer> known_transfers_;  // With source_checksum.
  std::vector<uint64_t> expected_;
  std::vector<Message> messages_;
  MPI_Win window_ = MPI_WIN_NULL;
  bool split_ = false;
  char note_ = 0;  // The buffer of empty messages.
  int64_t mismatches_ = 0;
  bool failed_ = false;
};

struct Row {
  int64_t expert_bytes = 0;
  int experts = 0;
  int64_t batch_bytes = 0;
  std::vector<double> eplb_seconds, transfer_seconds, verify_seconds,
      known_seconds, mpi_seconds, split_seconds;
};

int Main(int argc, char** argv) {
  auto job_or = eplb::MpiJob::Init(&argc, &argv);
  if (!job_or.ok()) {
    std::fprintf(stderr, "eplb_bench_mpi_bandwidth: %s\n",
                 job_or.status().ToString().c_str());
    return 1;
  }
  std::unique_ptr<eplb::MpiJob> job = std::move(*job_or);
  const bool speaks = job->rank() == 0;

  Flags f;
  CLI::App app{
      "eplb_bench_mpi_bandwidth: expert migration over eplb's MPI transport "
      "against raw MPI point to point (run under mpirun -np 2)"};
  app.add_option("--sizes", f.sizes,
                 "Comma-separated expert sizes (K, M, G: KiB, MiB, GiB)")
      ->capture_default_str();
  app.add_option("--total-mib", f.total_mib,
                 "Bytes per batch, at least (MiB): experts = total / size, "
                 "rounded up, at least 2")
      ->capture_default_str();
  app.add_option("--reps", f.reps, "Timed runs of each, median reported")
      ->capture_default_str();
  app.add_option("--tensors", f.tensors, "Tensors per expert")
      ->capture_default_str();
  app.add_flag("--both", f.both,
               "Both directions at once (rank 0 -> 1 and 1 -> 0)");
  app.add_option("--max-in-flight", f.max_in_flight,
                 "Transport window, and the reference's")
      ->capture_default_str();
  app.add_option("--chunk-bytes", f.chunk,
                 "Transport chunk, and the reference's message size")
      ->capture_default_str();
  app.add_flag("--two-sided", f.two_sided,
               "Send every chunk (MpiTransportOptions::one_sided off)");
  app.add_flag("--json", f.json, "Print JSON instead of the table");
  try {
    app.parse(argc, argv);
  } catch (const CLI::Success& e) {
    if (speaks) app.exit(e);
    return 0;
  } catch (const CLI::ParseError& e) {
    if (speaks) {
      std::fprintf(stderr, "eplb_bench_mpi_bandwidth: %s (see --help)\n",
                   e.what());
    }
    return 2;
  }
  auto bad = [&](const std::string& what) {
    if (speaks)
      std::fprintf(stderr, "eplb_bench_mpi_bandwidth: %s\n", what.c_str());
    return 2;
  };
  if (job->size() != 2) {
    return bad("runs with exactly 2 processes (mpirun -np 2), not " +
               std::to_string(job->size()));
  }
  std::vector<int64_t> sizes;
  {
    size_t at = 0;
    while (at <= f.sizes.size()) {
      const size_t comma = std::min(f.sizes.find(',', at), f.sizes.size());
      const std::string item = f.sizes.substr(at, comma - at);
      const int64_t b = ParseBytes(item);
      if (b < 8 || b > (int64_t{1} << 31)) {
        return bad("--sizes " + item + ": must be 8 bytes to 2 GiB");
      }
      sizes.push_back(b);
      at = comma + 1;
    }
  }
  const int64_t chunk = ParseBytes(f.chunk);
  if (chunk < 8 || chunk > (int64_t{1} << 30)) {
    return bad("--chunk-bytes " + f.chunk + ": must be 8 bytes to 1 GiB");
  }
  if (f.reps < 1 || f.total_mib < 1 || f.tensors < 1 || f.max_in_flight < 1) {
    return bad(
        "--reps, --total-mib, --tensors and --max-in-flight must be >= 1");
  }
  for (int64_t s : sizes) {
    if (s / f.tensors < 8) {
      return bad("--sizes " + FormatBytes(s) + ": under 8 bytes per tensor");
    }
  }

  auto transport_or = job->CreateTransport({.max_in_flight = f.max_in_flight,
                                            .chunk_bytes = chunk,
                                            .one_sided = !f.two_sided});
  if (!transport_or.ok()) {
    return bad(transport_or.status().ToString());
  }
  std::unique_ptr<eplb::Transport> transport = std::move(*transport_or);

  std::vector<Row> rows;
  int64_t mismatches = 0;
  bool failed = false;
  {
    Bench bench(*job, f, chunk);
    for (int64_t size : sizes) {
      bench.Setup(size);
      Row row;
      row.expert_bytes = size;
      row.experts = bench.experts();
      row.batch_bytes = bench.batch_bytes();
      // One untimed run of each first (page faults, MPI's first messages).
      bench.Eplb(*transport, false);
      bench.Eplb(*transport, true);
      bench.Mpi();
      if (bench.split()) bench.Mpi(true);
      for (int r = 0; r < f.reps; ++r) {
        const Run e = bench.Eplb(*transport, false);
        row.eplb_seconds.push_back(e.seconds);
        row.transfer_seconds.push_back(e.transfer_seconds);
        row.verify_seconds.push_back(e.verify_seconds);
        row.known_seconds.push_back(bench.Eplb(*transport, true).seconds);
        row.mpi_seconds.push_back(bench.Mpi().seconds);
        if (bench.split()) row.split_seconds.push_back(bench.Mpi(true).seconds);
      }
      rows.push_back(std::move(row));
    }
    int64_t v[2] = {bench.mismatches(), bench.failed() ? 1 : 0};
    MPI_Allreduce(MPI_IN_PLACE, v, 2, MPI_INT64_T, MPI_SUM, MPI_COMM_WORLD);
    mismatches = v[0];
    failed = v[1] != 0;
  }
  // Transfer and verification: the slower rank's (rank 1 receives).
  for (Row& row : rows) {
    for (std::vector<double>* v :
         {&row.transfer_seconds, &row.verify_seconds}) {
      MPI_Allreduce(MPI_IN_PLACE, v->data(), static_cast<int>(v->size()),
                    MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
    }
  }
  transport.reset();

  if (speaks) {
    const char* dir = f.both ? "both directions at once" : "rank 0 -> rank 1";
    if (f.json) {
      nlohmann::json out;
      out["direction"] = f.both ? "both" : "0->1";
      out["one_sided"] = job->one_sided();
      out["tensors_per_expert"] = f.tensors;
      out["max_in_flight"] = f.max_in_flight;
      out["chunk_bytes"] = chunk;
      out["reps"] = f.reps;
      out["checksum_mismatches"] = mismatches;
      out["failed"] = failed;
      for (const Row& row : rows) {
        const double b = static_cast<double>(row.batch_bytes);
        const double e = Median(row.eplb_seconds);
        const double m = Median(row.mpi_seconds);
        const double x = Median(row.transfer_seconds);
        const double k = Median(row.known_seconds);
        out["sizes"].push_back({{"expert_bytes", row.expert_bytes},
                                {"experts", row.experts},
                                {"batch_bytes", row.batch_bytes},
                                {"eplb_seconds", row.eplb_seconds},
                                {"eplb_transfer_seconds", row.transfer_seconds},
                                {"eplb_verify_seconds", row.verify_seconds},
                                {"eplb_known_seconds", row.known_seconds},
                                {"eplb_known_gbps", b / k / 1e9},
                                {"known_ratio", m / k},
                                {"mpi_seconds", row.mpi_seconds},
                                {"eplb_gbps", b / e / 1e9},
                                {"eplb_transfer_gbps", b / x / 1e9},
                                {"mpi_gbps", b / m / 1e9},
                                {"ratio", m / e},
                                {"transfer_ratio", m / x}});
        if (!row.split_seconds.empty()) {
          const double sp = Median(row.split_seconds);
          nlohmann::json& last = out["sizes"].back();
          last["mpi_split_seconds"] = row.split_seconds;
          last["mpi_split_gbps"] = b / sp / 1e9;
          last["split_ratio"] = sp / e;
          last["known_split_ratio"] = sp / k;
        }
      }
      std::printf("%s\n", out.dump(2).c_str());
    } else {
      std::printf(
          "eplb MPI transport (%s) vs raw MPI point to point, %s; %d "
          "tensor(s) per expert, window %d, chunk %s; median of %d runs "
          "each\n",
          job->one_sided() ? "every other chunk one-sided" : "every chunk sent",
          dir, f.tensors, f.max_in_flight, FormatBytes(chunk).c_str(), f.reps);
      std::printf("%-8s %7s %9s %9s %10s %6s %10s %6s %9s %9s %9s\n", "expert",
                  "experts", "batch MiB", "MPI GB/s", "eplb GB/s", "ratio",
                  "known GB/s", "ratio", "verify ms", "split GB/s", "of split");
      for (const Row& row : rows) {
        const double b = static_cast<double>(row.batch_bytes);
        const double e = Median(row.eplb_seconds);
        const double m = Median(row.mpi_seconds);
        const double k = Median(row.known_seconds);
        std::string split = "        -         -";
        if (!row.split_seconds.empty()) {
          const double sp = Median(row.split_seconds);
          char text[48];
          std::snprintf(text, sizeof(text), "%10.2f %4.0f/%2.0f%%",
                        b / sp / 1e9, 100 * sp / e, 100 * sp / k);
          split = text;
        }
        std::printf(
            "%-8s %7d %9.0f %9.2f %10.2f %5.0f%% %10.2f %5.0f%% %9.1f %s\n",
            FormatBytes(row.expert_bytes).c_str(), row.experts, b / (1 << 20),
            b / m / 1e9, b / e / 1e9, 100 * m / e, b / k / 1e9, 100 * m / k,
            Median(row.verify_seconds) * 1e3, split.c_str());
      }
      std::printf(
          "eplb: Start to Done, then the receiver's verification "
          "(landed_checksum against source_checksum), the sender computing "
          "its checksum; known: the same with the checksum given "
          "(Transfer::source_checksum, as the migration engine does once an "
          "expert's earlier transfer verified); verify: the verification's "
          "median time; split: raw MPI with every other chunk each way "
          "MPI_Put (eplb's one-sided data path without its checks), and "
          "eplb's and known's share of it\n");
      std::printf("checksum mismatches: %lld%s\n",
                  static_cast<long long>(mismatches),
                  failed ? " (a batch failed)" : "");
    }
    std::fflush(stdout);
  }
  return mismatches != 0 || failed ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) { return Main(argc, argv); }
