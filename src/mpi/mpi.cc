#include "eplb/mpi.h"

#include <mpi.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <deque>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "eplb/clock.h"
#include "eplb/weights.h"

namespace eplb {
namespace {

constexpr int kDataTag = 1;
constexpr int kChecksumTag = 2;
// The receiver's staging addresses of one transfer, for its one-sided
// chunks.
constexpr int kAddressTag = 3;

std::string MpiError(int code) {
  char text[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(code, text, &len);
  return std::string(text, static_cast<size_t>(len));
}

// One batch's progress, shared by the caller's handle and the worker.
class MpiBatch final : public TransferBatch {
 public:
  MpiBatch(std::vector<Transfer> transfers, ExpertWeights* weights)
      : transfers_(std::move(transfers)),
        weights_(weights),
        checksums_(transfers_.size(), 0),
        landed_(transfers_.size(), 0),
        landing_(transfers_.size(), kChecksumSeed) {}
  bool Done() const override { return done_.load(std::memory_order_acquire); }
  void Wait() override {
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait(lock, [this] { return Done(); });
  }
  Status result() const override {
    std::lock_guard<std::mutex> lock(mu_);
    return status_;
  }
  uint64_t source_checksum(size_t i) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return checksums_[i];
  }
  uint64_t landed_checksum(size_t i) const override {
    std::lock_guard<std::mutex> lock(mu_);
    return landed_[i];
  }

  // Worker thread.
  void Finish(Status s) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      if (status_.ok()) status_ = std::move(s);
      done_.store(true, std::memory_order_release);
    }
    cv_.notify_all();
  }
  std::vector<Transfer> transfers_;
  ExpertWeights* weights_;
  // Written by the worker before Finish; read after Done().
  std::vector<uint64_t> checksums_;
  std::vector<uint64_t> landed_;
  std::vector<uint64_t> landing_;  // The read-back thread's running sums.

 private:
  mutable std::mutex mu_;
  std::condition_variable cv_;
  std::atomic<bool> done_{false};
  Status status_;
};

class BatchHandle final : public TransferBatch {
 public:
  explicit BatchHandle(std::shared_ptr<MpiBatch> b) : b_(std::move(b)) {}
  bool Done() const override { return b_->Done(); }
  void Wait() override { b_->Wait(); }
  Status result() const override { return b_->result(); }
  uint64_t source_checksum(size_t i) const override {
    return b_->source_checksum(i);
  }
  uint64_t landed_checksum(size_t i) const override {
    return b_->landed_checksum(i);
  }

 private:
  std::shared_ptr<MpiBatch> b_;
};

// Reads landed data back on a thread of its own: with single-copy shared
// memory the receiving process's transport thread is the one copying, so a
// read-back there would follow the copy instead of overlapping it.
class ReadBackThread {
 public:
  ReadBackThread() : thread_([this] { Run(); }) {}
  ~ReadBackThread() {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  ReadBackThread(const ReadBackThread&) = delete;
  ReadBackThread& operator=(const ReadBackThread&) = delete;

  // Chains `data` into *state (ChecksumBytes); then, when `out` is set,
  // writes *state | 1 to it. Pieces are read in the order pushed.
  void Push(std::span<const std::byte> data, uint64_t* state, uint64_t* out) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back({data, state, out});
      ++pushed_;
    }
    cv_.notify_one();
  }
  // Blocks until every piece pushed so far is read.
  void Drain() {
    std::unique_lock<std::mutex> lock(mu_);
    drained_.wait(lock, [this] { return read_ == pushed_; });
  }

 private:
  struct Piece {
    std::span<const std::byte> data;
    uint64_t* state;
    uint64_t* out;
  };
  void Run() {
    for (;;) {
      Piece p;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;  // Stopping.
        p = queue_.front();
        queue_.pop_front();
      }
      if (!p.data.empty()) *p.state = ChecksumBytes(p.data, *p.state);
      if (p.out != nullptr) *p.out = *p.state | 1;
      {
        std::lock_guard<std::mutex> lock(mu_);
        ++read_;
      }
      drained_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, drained_;
  std::deque<Piece> queue_;
  int64_t pushed_ = 0, read_ = 0;
  bool stop_ = false;
  std::thread thread_;
};

class MpiTransport final : public Transport {
 public:
  // `window`: a dynamic window over `comm` in a passive-target epoch
  // (MPI_Win_lock_all), or MPI_WIN_NULL to send every chunk.
  MpiTransport(MPI_Comm comm, MPI_Win window, int rank,
               const MpiTransportOptions& o,
               std::shared_ptr<std::atomic<int64_t>> put_bytes)
      : comm_(comm),
        window_(window),
        rank_(rank),
        options_(o),
        put_bytes_(std::move(put_bytes)) {
    MPI_Comm_size(comm_, &size_);
    worker_ = std::thread([this] { Run(); });
  }
  ~MpiTransport() override {
    {
      std::lock_guard<std::mutex> lock(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    worker_.join();
    if (window_ != MPI_WIN_NULL) {
      // Collective: returns once every process freed it, so no peer still
      // writes into memory this process attached. The attached buffers go
      // with the window.
      MPI_Win_unlock_all(window_);
      MPI_Win_free(&window_);
    }
    MPI_Comm_free(&comm_);
  }

  StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, ExpertWeights* weights) override {
    auto batch = std::make_shared<MpiBatch>(
        std::vector<Transfer>(transfers.begin(), transfers.end()), weights);
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(batch);
    }
    cv_.notify_all();
    return std::unique_ptr<TransferBatch>(std::make_unique<BatchHandle>(batch));
  }

 private:
  // One message of a batch, in the order both sides enumerate them.
  struct Message {
    bool send = false;
    int peer = 0;
    int tag = kDataTag;
    std::byte* data = nullptr;
    int bytes = 0;
    // A sent checksum: its index in `sums` (Move), finished before posting.
    int sum = -1;
    // A received piece of transfer `landing`'s data (read back once it
    // lands), or its checksum (`landing` complete).
    int landing = -1;
    // A one-sided chunk. The sender writes `bytes` from `data` with MPI_Put
    // to the receiver's address for tensor `tensor` (received by message
    // `addresses`, into `target`) plus `offset`, then sends an empty
    // message; the receiver receives that empty message, and then reads
    // back `bytes` at `data`, where the chunk landed.
    bool put = false;
    int addresses = -1;
    int tensor = 0;
    MPI_Aint offset = 0;
    const MPI_Aint* target = nullptr;
  };
  // The checksum of an expert this process sends, computed while the data
  // is in flight.
  struct PendingSum {
    size_t transfer = 0;
    SlotChecksumCursor cursor;
  };
  // Checksum work between two polls that found nothing completed: about
  // 0.1 ms at memory speed.
  static constexpr size_t kSumPieceBytes = 1 << 20;
  // Polls that find nothing completed, in a row, before the worker sleeps
  // between polls (a few milliseconds of polling). Data moves between
  // completions: without single-copy shared memory (CMA unavailable, as in
  // containers without ptrace rights, or over TCP) MPI copies each message
  // through shared fragments that both sides must keep progressing, so a
  // sleep between polls stalls the copy (33-38% of MPI's bandwidth with a
  // 20 us sleep against 51-58% polling, on one core per process). Past the
  // limit the peer is not sending, and the worker sleeps 20 us between
  // polls so as not to keep a core busy.
  static constexpr int kPollsBeforeSleep = 2000;

  void Run() {
    for (;;) {
      std::shared_ptr<MpiBatch> batch;
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
        if (stop_) {
          for (auto& b : queue_)
            b->Finish(UnavailableError("transport stopped"));
          queue_.clear();
          return;
        }
        batch = std::move(queue_.front());
        queue_.pop_front();
      }
      Status moved = Move(*batch);
      read_back_.Drain();  // Its pieces point into the batch.
      batch->Finish(std::move(moved));
    }
  }

  // Moves one batch: local copies at once, then every message through a
  // window of at most max_in_flight posted requests. The checksums of sent
  // experts are computed between polls, once the first messages are
  // posted, rather than before: each is finished (if it is not yet) when
  // the window reaches its message, after the expert's data.
  Status Move(MpiBatch& b) {
    ExpertWeights& w = *b.weights_;
    std::vector<Message> messages;
    std::vector<uint64_t> sent_sums(b.transfers_.size(), 0);
    std::vector<PendingSum> sums;
    const auto chunk = static_cast<size_t>(options_.chunk_bytes);
    // One-sided chunks: the receiver's staging addresses, per direction
    // and peer (Pairs).
    std::vector<Pair> to_peer, from_peer;
    std::vector<size_t> address_at(b.transfers_.size(), 0);
    if (window_ != MPI_WIN_NULL) {
      PlanOneSided(b, &to_peer, &from_peer, &address_at);
    }
    Pair* pair = nullptr;              // The current transfer's.
    const MPI_Aint* target = nullptr;  // Its addresses, one per tensor.
    auto add = [&](bool send, int peer, std::byte* data, size_t bytes,
                   int landing, int tensor) {
      for (size_t at = 0; at < bytes || (bytes == 0 && at == 0); at += chunk) {
        Message m{send,
                  peer,
                  kDataTag,
                  data + at,
                  static_cast<int>(std::min(chunk, bytes - at)),
                  -1,
                  landing};
        // Every other chunk between two processes, from the second (the
        // first is sent while the addresses travel). The receiver knows its
        // addresses; the sender learns them when they arrive, and sends
        // the chunk instead where one is 0 (PostPut).
        if (pair != nullptr && pair->address_msg >= 0 && bytes > 0 &&
            pair->chunks % 2 == 1 && (send || target[tensor] != 0)) {
          m.put = true;
          m.addresses = pair->address_msg;
          m.tensor = tensor;
          m.offset = static_cast<MPI_Aint>(at);
          m.target = target;
        }
        if (pair != nullptr) ++pair->chunks;
        messages.push_back(m);
        if (bytes == 0) break;
      }
    };
    for (size_t i = 0; i < b.transfers_.size(); ++i) {
      const Transfer& t = b.transfers_[i];
      const bool src = t.src_rank == rank_;
      const bool dst = t.dst_rank == rank_;
      if (!src && !dst) continue;
      if (src && dst) {
        b.checksums_[i] =
            t.source_checksum != 0
                ? t.source_checksum
                : SlotChecksum(w, t.src_rank, t.layer, t.src_slot);
        for (int x = 0; x < w.num_tensors(); ++x) {
          auto from = w.Slot(t.src_rank, t.layer, t.src_slot, x);
          auto to = w.Staging(t.dst_rank, t.staging, x);
          if (from.size() != to.size()) {
            return InternalError("MPI transport: tensor sizes differ");
          }
          std::memcpy(to.data(), from.data(), from.size());
        }
        b.landed_[i] = StagingChecksum(w, t.dst_rank, t.staging);
        continue;
      }
      const int peer = src ? t.dst_rank : t.src_rank;
      pair = nullptr;
      if (window_ != MPI_WIN_NULL) {
        pair = src ? &to_peer[static_cast<size_t>(peer)]
                   : &from_peer[static_cast<size_t>(peer)];
        if (pair->addresses.empty()) {
          pair = nullptr;  // Fewer than two chunks: all sent.
        } else {
          if (pair->address_msg < 0) {
            // With the pair's first transfer, the receiver sends every
            // address of the batch's transfers between the two; the sender
            // waits for them before its first one-sided chunk.
            pair->address_msg = static_cast<int>(messages.size());
            messages.push_back(
                {dst, peer, kAddressTag,
                 reinterpret_cast<std::byte*>(pair->addresses.data()),
                 static_cast<int>(pair->addresses.size() * sizeof(MPI_Aint)),
                 -1, -1});
          }
          target = pair->addresses.data() + address_at[i];
        }
      }
      for (int x = 0; x < w.num_tensors(); ++x) {
        if (src) {
          auto from = w.Slot(t.src_rank, t.layer, t.src_slot, x);
          // MPI's send buffers are const in spirit; the API takes void*.
          add(true, t.dst_rank, const_cast<std::byte*>(from.data()),
              from.size(), -1, x);
        } else {
          auto to = w.Staging(t.dst_rank, t.staging, x);
          if (to.empty()) {
            return InternalError("MPI transport: no staging buffer " +
                                 std::to_string(t.staging) + " on rank " +
                                 std::to_string(rank_));
          }
          add(false, t.src_rank, to.data(), to.size(), static_cast<int>(i), x);
        }
      }
      if (src && t.source_checksum != 0) {
        // Known: the source is read once, by the copy.
        sent_sums[i] = t.source_checksum;
        messages.push_back({true, t.dst_rank, kChecksumTag,
                            reinterpret_cast<std::byte*>(&sent_sums[i]), 8, -1,
                            -1});
      } else if (src) {
        messages.push_back({true, t.dst_rank, kChecksumTag,
                            reinterpret_cast<std::byte*>(&sent_sums[i]), 8,
                            static_cast<int>(sums.size())});
        sums.push_back(
            {i, SlotChecksumCursor(w, t.src_rank, t.layer, t.src_slot)});
      } else {
        messages.push_back({false, t.src_rank, kChecksumTag,
                            reinterpret_cast<std::byte*>(&b.checksums_[i]), 8,
                            -1, static_cast<int>(i)});
      }
    }
    const size_t window = static_cast<size_t>(options_.max_in_flight);
    std::vector<MPI_Request> requests(window, MPI_REQUEST_NULL);
    std::vector<size_t> posted_as(window);  // The message each slot holds.
    std::vector<int> done_index(window);
    std::vector<char> completed_flag(messages.size(), 0);
    // Received data is read back in message order as it lands, chunk by
    // chunk, on the read-back thread (ChecksumBytes chains over chunks that
    // are whole blocks).
    size_t next = 0;  // The next message to post.
    size_t next_landed = 0;
    auto read_back = [&] {
      bool synced = false;
      for (; next_landed < next; ++next_landed) {
        const Message& m = messages[next_landed];
        if (m.send || m.landing < 0) continue;
        if (completed_flag[next_landed] == 0) return;
        const auto i = static_cast<size_t>(m.landing);
        if (m.put && !synced) {
          // What peers wrote into the window, visible to this process's
          // loads (a memory barrier where the window is unified).
          MPI_Win_sync(window_);
          synced = true;
        }
        if (m.tag == kDataTag) {
          read_back_.Push(
              std::span<const std::byte>(m.data, static_cast<size_t>(m.bytes)),
              &b.landing_[i], nullptr);
        } else {
          read_back_.Push({}, &b.landing_[i], &b.landed_[i]);
        }
      }
    };
    size_t active = 0;
    int idle_polls = 0;   // Polls in a row that completed nothing.
    size_t next_sum = 0;  // sums[< next_sum] are done.
    auto finish_sums = [&](size_t upto) {
      for (; next_sum < upto; ++next_sum) {
        PendingSum& p = sums[next_sum];
        p.cursor.Advance(SIZE_MAX);  // The rest of it, at once.
        sent_sums[p.transfer] = p.cursor.value();
      }
    };
    while (next < messages.size() || active > 0) {
      for (size_t slot = 0; slot < window && next < messages.size(); ++slot) {
        if (requests[slot] != MPI_REQUEST_NULL) continue;
        const Message& m = messages[next];
        // A one-sided chunk waits for the receiver's addresses.
        if (m.put && m.send && completed_flag[m.addresses] == 0) break;
        ++next;
        if (m.sum >= 0) finish_sums(static_cast<size_t>(m.sum) + 1);
        posted_as[slot] = next - 1;
        int rc;
        if (m.put && m.send) {
          rc = PostPut(m, &requests[slot]);
        } else if (m.put) {
          rc = MPI_Irecv(&note_, 0, MPI_BYTE, m.peer, m.tag, comm_,
                         &requests[slot]);
        } else if (m.send) {
          rc = MPI_Isend(m.data, m.bytes, MPI_BYTE, m.peer, m.tag, comm_,
                         &requests[slot]);
        } else {
          rc = MPI_Irecv(m.data, m.bytes, MPI_BYTE, m.peer, m.tag, comm_,
                         &requests[slot]);
        }
        if (rc != MPI_SUCCESS) {
          Cancel(requests);
          return UnavailableError("MPI transport: " + MpiError(rc));
        }
        ++active;
      }
      // The window is full again: read back what landed meanwhile.
      read_back();
      int completed = 0;
      const int rc =
          MPI_Testsome(static_cast<int>(window), requests.data(), &completed,
                       done_index.data(), MPI_STATUSES_IGNORE);
      if (rc != MPI_SUCCESS) {
        Cancel(requests);
        return UnavailableError("MPI transport: " + MpiError(rc));
      }
      if (completed == MPI_UNDEFINED) completed = 0;
      active -= static_cast<size_t>(completed);
      for (int k = 0; k < completed; ++k) {
        completed_flag[posted_as[static_cast<size_t>(done_index[k])]] = 1;
      }
      if (completed == 0) {
        bool stopping;
        {
          std::lock_guard<std::mutex> lock(mu_);
          stopping = stop_;
        }
        if (stopping) {
          Cancel(requests);
          return UnavailableError("MPI transport stopped mid-batch");
        }
        if (next_sum < sums.size()) {
          // Nothing finished: a piece of the next checksum to send.
          PendingSum& p = sums[next_sum];
          if (p.cursor.Advance(kSumPieceBytes)) {
            sent_sums[p.transfer] = p.cursor.value();
            ++next_sum;
          }
        } else if (++idle_polls < kPollsBeforeSleep) {
          // Nothing finished: poll again soon, after the other threads and
          // processes on this core had their turn.
          std::this_thread::yield();
        } else {
          std::this_thread::sleep_for(std::chrono::microseconds(20));
        }
      } else {
        idle_polls = 0;
      }
    }
    read_back();
    // What this process sent, for its caller to keep (source_checksum()).
    for (size_t i = 0; i < b.transfers_.size(); ++i) {
      const Transfer& t = b.transfers_[i];
      if (t.src_rank == rank_ && t.dst_rank != rank_) {
        b.checksums_[i] = sent_sums[i];
      }
    }
    return Status::Ok();
  }

  // A one-sided chunk: MPI_Put to the receiver's address, completed at the
  // target (MPI_Win_flush), then the empty message that tells the receiver
  // it landed. Where the receiver gave no address, the chunk is sent.
  int PostPut(const Message& m, MPI_Request* request) {
    const MPI_Aint base = m.target[m.tensor];
    if (base == 0) {
      return MPI_Isend(m.data, m.bytes, MPI_BYTE, m.peer, m.tag, comm_,
                       request);
    }
    int rc = MPI_Put(m.data, m.bytes, MPI_BYTE, m.peer,
                     MPI_Aint_add(base, m.offset), m.bytes, MPI_BYTE, window_);
    if (rc == MPI_SUCCESS) rc = MPI_Win_flush(m.peer, window_);
    if (rc != MPI_SUCCESS) return rc;
    put_bytes_->fetch_add(m.bytes, std::memory_order_relaxed);
    return MPI_Isend(&note_, 0, MPI_BYTE, m.peer, m.tag, comm_, request);
  }

  // The transfers between this process and one peer in one direction.
  struct Pair {
    // Per transfer in batch order, one per tensor: the receiver's address
    // of its staging tensor (0: that tensor's chunks are all sent). Empty
    // when the two exchange fewer than two chunks this way (no one-sided
    // chunk).
    std::vector<MPI_Aint> addresses;
    int address_msg = -1;  // The message that carries them.
    int chunks = 0;        // Chunks enumerated so far.
  };

  // Fills the pairs of this process (both sides count the same chunks) and
  // each transfer's index into its pair's addresses; where this process
  // receives, attaches the staging tensors to the window for their
  // addresses.
  void PlanOneSided(MpiBatch& b, std::vector<Pair>* to_peer,
                    std::vector<Pair>* from_peer,
                    std::vector<size_t>* address_at) {
    ExpertWeights& w = *b.weights_;
    if (&w != attached_for_) {
      // Other weights: what was attached may be gone.
      DetachAll();
      attached_for_ = &w;
      std::vector<std::span<std::byte>> regions = w.Regions(rank_);
      if (regions.size() <= kMaxAttached) {
        for (std::span<std::byte> r : regions) {
          if (!r.empty()) Attach(r, /*pinned=*/true);
        }
      }
    }
    ++batch_;
    to_peer->assign(static_cast<size_t>(size_), Pair{});
    from_peer->assign(static_cast<size_t>(size_), Pair{});
    const auto chunk = static_cast<size_t>(options_.chunk_bytes);
    auto chunks = [chunk](size_t bytes) {
      return bytes == 0 ? size_t{1} : (bytes + chunk - 1) / chunk;
    };
    const auto tensors = static_cast<size_t>(w.num_tensors());
    for (size_t i = 0; i < b.transfers_.size(); ++i) {
      const Transfer& t = b.transfers_[i];
      const bool src = t.src_rank == rank_;
      const bool dst = t.dst_rank == rank_;
      if (src == dst) continue;  // Local, or not this process's.
      Pair& pair = src ? (*to_peer)[static_cast<size_t>(t.dst_rank)]
                       : (*from_peer)[static_cast<size_t>(t.src_rank)];
      (*address_at)[i] = pair.addresses.size();
      pair.addresses.resize(pair.addresses.size() + tensors, 0);
      for (int x = 0; x < w.num_tensors(); ++x) {
        if (src) {
          pair.chunks += static_cast<int>(
              chunks(w.Slot(t.src_rank, t.layer, t.src_slot, x).size()));
          continue;
        }
        std::span<std::byte> to = w.Staging(t.dst_rank, t.staging, x);
        pair.chunks += static_cast<int>(chunks(to.size()));
        if (to.empty() || !Covered(to)) continue;
        MPI_Get_address(
            to.data(),
            &pair.addresses[(*address_at)[i] + static_cast<size_t>(x)]);
      }
    }
    for (std::vector<Pair>* pairs : {to_peer, from_peer}) {
      for (Pair& pair : *pairs) {
        if (pair.chunks < 2) pair.addresses.clear();
        pair.chunks = 0;  // Counted again as the messages are enumerated.
      }
    }
  }

  // Whether `buffer` lies in an attached region, attaching it when not
  // (evicting a region no transfer of this batch uses when the window
  // holds kMaxAttached). Between batches no peer writes into this process:
  // every chunk of the last batch landed before it ended.
  bool Covered(std::span<std::byte> buffer) {
    const auto begin = reinterpret_cast<uintptr_t>(buffer.data());
    const uintptr_t end = begin + buffer.size();
    auto it = attached_.upper_bound(begin);
    if (it != attached_.begin()) {
      --it;
      if (it->first <= begin && end <= it->first + it->second.bytes) {
        it->second.batch = batch_;
        return true;
      }
    }
    // Overlapping regions (buffers the engine re-allocated) go first.
    for (auto o = attached_.begin(); o != attached_.end();) {
      if (o->first < end && begin < o->first + o->second.bytes &&
          !o->second.pinned) {
        MPI_Win_detach(window_, o->second.data);
        o = attached_.erase(o);
      } else {
        ++o;
      }
    }
    if (attached_.size() >= kMaxAttached) {
      auto victim = attached_.end();
      for (auto o = attached_.begin(); o != attached_.end(); ++o) {
        if (o->second.pinned || o->second.batch == batch_) continue;
        if (victim == attached_.end() ||
            o->second.batch < victim->second.batch) {
          victim = o;
        }
      }
      if (victim == attached_.end()) return false;
      MPI_Win_detach(window_, victim->second.data);
      attached_.erase(victim);
    }
    return Attach(buffer, /*pinned=*/false);
  }

  bool Attach(std::span<std::byte> region, bool pinned) {
    if (MPI_Win_attach(window_, region.data(),
                       static_cast<MPI_Aint>(region.size())) != MPI_SUCCESS) {
      return false;
    }
    attached_[reinterpret_cast<uintptr_t>(region.data())] =
        Region{region.data(), region.size(), batch_, pinned};
    return true;
  }

  void DetachAll() {
    for (const auto& [begin, region] : attached_) {
      MPI_Win_detach(window_, region.data);
    }
    attached_.clear();
  }

  static void Cancel(std::vector<MPI_Request>& requests) {
    for (MPI_Request& r : requests) {
      if (r == MPI_REQUEST_NULL) continue;
      MPI_Cancel(&r);
      MPI_Request_free(&r);
    }
  }

  MPI_Comm comm_;
  MPI_Win window_;
  int rank_;
  int size_ = 1;
  MpiTransportOptions options_;
  // Regions attached to the window (worker thread only), by start address.
  struct Region {
    std::byte* data = nullptr;
    size_t bytes = 0;
    int64_t batch = 0;    // The last batch that used it.
    bool pinned = false;  // One of the weights' Regions(): never evicted.
  };
  // Open MPI's osc/rdma attaches at most 64 regions to a dynamic window by
  // default (osc_rdma_max_attach); this stays below it.
  static constexpr size_t kMaxAttached = 32;
  std::map<uintptr_t, Region> attached_;
  const ExpertWeights* attached_for_ = nullptr;
  int64_t batch_ = 0;
  char note_ = 0;  // The buffer of empty messages.
  std::shared_ptr<std::atomic<int64_t>> put_bytes_;
  ReadBackThread read_back_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<MpiBatch>> queue_;
  bool stop_ = false;
  std::thread worker_;
};

}  // namespace

class MpiJob::MpiCollective final : public Collective {
 public:
  MpiCollective(MPI_Comm comm, int rank, int size)
      : comm_(comm), rank_(rank), size_(size) {
    MPI_Comm_dup(comm_, &heartbeat_);
    MPI_Comm_set_errhandler(heartbeat_, MPI_ERRORS_RETURN);
  }
  ~MpiCollective() override {
    MPI_Comm_free(&comm_);
    MPI_Comm_free(&heartbeat_);
  }
  int rank() const override { return rank_; }
  int size() const override { return size_; }
  Status AllReduceSum(std::span<int64_t> values) override {
    return Reduce(values, MPI_SUM);
  }
  Status AllReduceMax(std::span<int64_t> values) override {
    return Reduce(values, MPI_MAX);
  }
  std::atomic<int64_t> timeout_nanos{60'000'000'000};

  // See MpiJob::Recover.
  StatusOr<std::vector<int>> Recover(int64_t timeout, int epoch) {
    const int tag = 1000 + epoch;
    char out = 1;
    std::vector<char> in(static_cast<size_t>(size_), 0);
    std::vector<MPI_Request> sends(static_cast<size_t>(size_),
                                   MPI_REQUEST_NULL);
    std::vector<MPI_Request> recvs(static_cast<size_t>(size_),
                                   MPI_REQUEST_NULL);
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      MPI_Isend(&out, 1, MPI_CHAR, p, tag, heartbeat_, &sends[p]);
      MPI_Irecv(&in[p], 1, MPI_CHAR, p, tag, heartbeat_, &recvs[p]);
    }
    in[rank_] = 1;
    // Every answer, or the deadline: a lost process never answers.
    const int64_t deadline = SystemClock()->NowNanos() + timeout;
    for (;;) {
      int all = 0;
      MPI_Testall(size_, recvs.data(), &all, MPI_STATUSES_IGNORE);
      if (all || SystemClock()->NowNanos() > deadline) break;
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    std::vector<int> alive;
    for (int p = 0; p < size_; ++p) {
      if (recvs[p] != MPI_REQUEST_NULL) {
        MPI_Cancel(&recvs[p]);
        MPI_Request_free(&recvs[p]);
      }
      if (sends[p] != MPI_REQUEST_NULL) MPI_Request_free(&sends[p]);
      if (in[p] != 0) alive.push_back(p);
    }
    MPI_Group all_group, alive_group;
    MPI_Comm_group(heartbeat_, &all_group);
    MPI_Group_incl(all_group, static_cast<int>(alive.size()), alive.data(),
                   &alive_group);
    MPI_Comm survivors;
    const int rc =
        MPI_Comm_create_group(heartbeat_, alive_group, tag, &survivors);
    MPI_Group_free(&alive_group);
    MPI_Group_free(&all_group);
    if (rc != MPI_SUCCESS || survivors == MPI_COMM_NULL) {
      return UnavailableError("MPI: forming the survivors' communicator: " +
                              MpiError(rc));
    }
    MPI_Comm_set_errhandler(survivors, MPI_ERRORS_RETURN);
    // Every survivor must have seen the same survivors.
    std::vector<int> seen(static_cast<size_t>(size_), 0);
    for (int p : alive) seen[p] = 1;
    std::vector<int> lo = seen, hi = seen;
    MPI_Allreduce(MPI_IN_PLACE, lo.data(), size_, MPI_INT, MPI_MIN, survivors);
    MPI_Allreduce(MPI_IN_PLACE, hi.data(), size_, MPI_INT, MPI_MAX, survivors);
    if (lo != hi) {
      MPI_Comm_free(&survivors);
      return UnavailableError(
          "MPI: the surviving processes disagree on who survived");
    }
    // The old communicators may hold a collective the lost process never
    // joined: they are abandoned, not freed.
    comm_ = survivors;
    MPI_Comm_dup(comm_, &heartbeat_);
    MPI_Comm_set_errhandler(heartbeat_, MPI_ERRORS_RETURN);
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    return alive;
  }
  MPI_Comm comm() const { return comm_; }

 private:
  Status Reduce(std::span<int64_t> values, MPI_Op op) {
    if (values.empty()) return Status::Ok();
    MPI_Request request;
    int rc = MPI_Iallreduce(MPI_IN_PLACE, values.data(),
                            static_cast<int>(values.size()), MPI_INT64_T, op,
                            comm_, &request);
    if (rc != MPI_SUCCESS) return UnavailableError("MPI: " + MpiError(rc));
    const int64_t deadline = SystemClock()->NowNanos() + timeout_nanos.load();
    for (int spin = 0;; ++spin) {
      int flag = 0;
      rc = MPI_Test(&request, &flag, MPI_STATUS_IGNORE);
      if (rc != MPI_SUCCESS) return UnavailableError("MPI: " + MpiError(rc));
      if (flag) return Status::Ok();
      if (SystemClock()->NowNanos() > deadline) {
        // The request stays posted: the job cannot use this communicator
        // again, which the caller learns from the error.
        return DeadlineExceededError(
            "MPI: a collective call got no answer from every rank within " +
            std::to_string(timeout_nanos.load() / 1'000'000) + " ms");
      }
      if (spin > 64) std::this_thread::sleep_for(std::chrono::microseconds(10));
    }
  }

  MPI_Comm comm_;
  MPI_Comm heartbeat_;
  int rank_;
  int size_;
};

StatusOr<std::unique_ptr<MpiJob>> MpiJob::Init(int* argc, char*** argv) {
  int initialized = 0;
  MPI_Initialized(&initialized);
  if (initialized) return FailedPreconditionError("MPI is initialised already");
  int provided = 0;
  if (MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided) !=
      MPI_SUCCESS) {
    return UnavailableError("MPI_Init_thread failed");
  }
  if (provided < MPI_THREAD_MULTIPLE) {
    MPI_Finalize();
    return FailedPreconditionError(
        "this MPI does not support MPI_THREAD_MULTIPLE (eplb's transport "
        "moves weights on a thread of its own)");
  }
  auto job = std::unique_ptr<MpiJob>(new MpiJob());
  MPI_Comm_rank(MPI_COMM_WORLD, &job->rank_);
  MPI_Comm_size(MPI_COMM_WORLD, &job->size_);
  int len = 0;
  MPI_Get_processor_name(job->processor_name_, &len);
  MPI_Comm comm;
  MPI_Comm_dup(MPI_COMM_WORLD, &comm);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  job->collective_ =
      std::make_unique<MpiCollective>(comm, job->rank_, job->size_);
  return job;
}

MpiJob::~MpiJob() {
  collective_.reset();
  MPI_Finalize();
}

Collective& MpiJob::collective() { return *collective_; }

StatusOr<std::vector<int>> MpiJob::Recover(int64_t timeout_nanos) {
  EPLB_ASSIGN_OR_RETURN(std::vector<int> alive,
                        collective_->Recover(timeout_nanos, ++epoch_));
  rank_ = collective_->rank();
  size_ = collective_->size();
  return alive;
}

void MpiJob::set_collective_timeout_nanos(int64_t nanos) {
  collective_->timeout_nanos.store(nanos);
}

StatusOr<std::unique_ptr<Transport>> MpiJob::CreateTransport(
    const MpiTransportOptions& options) {
  if (options.max_in_flight < 1 || options.max_in_flight > 4096) {
    return InvalidArgumentError("MPI transport max_in_flight = " +
                                std::to_string(options.max_in_flight) +
                                ": must be in [1, 4096]");
  }
  const auto block = static_cast<int64_t>(kChecksumBlockBytes);
  if (options.chunk_bytes < block || options.chunk_bytes > (int64_t{1} << 30) ||
      options.chunk_bytes % block != 0) {
    return InvalidArgumentError(
        "MPI transport chunk_bytes = " + std::to_string(options.chunk_bytes) +
        ": must be a multiple of " + std::to_string(block) +
        " (the checksum's block) in [" + std::to_string(block) + ", 2^30]");
  }
  MPI_Comm comm;
  MPI_Comm_dup(collective_->comm(), &comm);
  MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
  MPI_Win window = MPI_WIN_NULL;
  if (options.one_sided) {
    // Every process must have the window, or none uses it.
    int ok =
        MPI_Win_create_dynamic(MPI_INFO_NULL, comm, &window) == MPI_SUCCESS &&
                window != MPI_WIN_NULL
            ? 1
            : 0;
    if (MPI_Allreduce(MPI_IN_PLACE, &ok, 1, MPI_INT, MPI_MIN, comm) !=
        MPI_SUCCESS) {
      ok = 0;
    }
    if (ok == 1) {
      MPI_Win_set_errhandler(window, MPI_ERRORS_RETURN);
      MPI_Win_lock_all(MPI_MODE_NOCHECK, window);
    } else {
      // Left unfreed where it was created (MPI_Win_free is collective and
      // some process has no window); the MPI reclaims it at MPI_Finalize.
      window = MPI_WIN_NULL;
    }
  }
  one_sided_ = window != MPI_WIN_NULL;
  return std::unique_ptr<Transport>(
      std::make_unique<MpiTransport>(comm, window, rank_, options, put_bytes_));
}

}  // namespace eplb
