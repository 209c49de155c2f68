// Transport: moves expert weights between ranks. The migration engine plans
// what to copy; a Transport copies it: in process (threads copying between
// the buffers of the ranks one process hosts), or between processes (MPI
// point to point, eplb/mpi.h; HCCL or NCCL alike). That is why every
// transfer names ranks and slots rather than pointers, and why both sides
// of a rank pair enumerate a batch's transfers in the same order.
//
// Every transfer carries its source's checksum (SlotChecksum, computed by
// the sender as it reads the source, or known from an earlier verified
// transfer of the same expert) and the checksum of what landed in the
// staging buffer (read back by the receiver), so that what commits is
// verified end to end, whatever the transport.
//
// Transports are thread-safe: Start() is called from the serving thread,
// copies run on the transport's own threads.
#ifndef EPLB_TRANSPORT_H_
#define EPLB_TRANSPORT_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>

#include "eplb/clock.h"
#include "eplb/status.h"
#include "eplb/weights.h"

namespace eplb {

// One expert copied from a live slot to a staging buffer (or, when
// src_rank == dst_rank, a local copy).
struct Transfer {
  int32_t layer = 0;
  int32_t expert = 0;
  int32_t src_rank = 0;
  int32_t src_slot = 0;
  int32_t dst_rank = 0;
  int32_t dst_slot = 0;    // Where it lands at commit.
  int32_t staging = 0;     // Staging buffer index on dst_rank.
  bool local = false;      // src_rank == dst_rank.
  int64_t real_bytes = 0;  // Bytes at the model's real size (reported).
  // The checksum (SlotChecksum) every replica of (layer, expert) has, when
  // the caller knows it from an earlier verified transfer; 0 when not. A
  // sender that is given it sends it instead of reading the source once
  // more for it, so the bytes are read once (by the copy) rather than
  // twice; the receiver's check against it then also catches a source
  // that changed since.
  uint64_t source_checksum = 0;

  friend bool operator==(const Transfer&, const Transfer&) = default;
};

// The progress of one started batch of transfers.
class TransferBatch {
 public:
  virtual ~TransferBatch() = default;
  // Non-blocking: true once every transfer finished (or failed).
  virtual bool Done() const = 0;
  // Blocks until Done(). For stop-the-world migration and shutdown only.
  virtual void Wait() = 0;
  // OK when all transfers completed; the first failure otherwise
  // (Unavailable, DeadlineExceeded, DataLoss, ...). Valid once Done().
  virtual Status result() const = 0;
  // The source checksum of transfer `i` of the batch (in Start's order), as
  // its sender computed it (or was given it, Transfer::source_checksum);
  // valid once Done() for transfers whose src_rank or dst_rank this process
  // hosts (0 where the transfer failed).
  virtual uint64_t source_checksum(size_t i) const = 0;
  // The checksum of what landed in transfer `i`'s staging buffer
  // (StagingChecksum of it), read back by the receiving side once the data
  // arrived, while the rest of the batch still moves, so that neither the
  // serving thread nor the end of the batch pays for a second pass over the
  // bytes. Valid once Done() for transfers whose dst_rank this process
  // hosts (0 where the transfer failed). The migration engine commits a
  // staging buffer only when it equals source_checksum(i).
  virtual uint64_t landed_checksum(size_t i) const = 0;
};

class Transport {
 public:
  virtual ~Transport() = default;
  // Starts `transfers` (copied) without blocking: this process sends those
  // whose src_rank it hosts and receives those whose dst_rank it hosts
  // (both, within a process). `weights` must outlive the batch.
  virtual StatusOr<std::unique_ptr<TransferBatch>> Start(
      std::span<const Transfer> transfers, ExpertWeights* weights) = 0;
};

struct InProcessTransportOptions {
  int num_threads = 1;  // Copy threads.
};
// Copies between buffers of one process on its own threads.
StatusOr<std::unique_ptr<Transport>> CreateInProcessTransport(
    const InProcessTransportOptions& options);

// Wraps a transport to inject faults (tests): every `fail_every`-th transfer
// (0 = never) fails with Unavailable, every `corrupt_every`-th has one byte
// flipped after the copy, and every batch takes at least `delay_nanos` (on
// `clock`) before it reports Done. With `forge_checksums`, a corrupted
// transfer also reports the checksum of what landed rather than the
// sender's, so the corruption passes the migration's check and commits: a
// broken transport that only an output check can catch.
struct FaultOptions {
  int fail_every = 0;
  int corrupt_every = 0;
  int64_t delay_nanos = 0;
  bool forge_checksums = false;
  // The clock delay_nanos is measured on; SystemClock() when null (a test
  // injects a ManualClock and advances it).
  Clock* clock = nullptr;
};
std::unique_ptr<Transport> WrapWithFaults(std::unique_ptr<Transport> inner,
                                          const FaultOptions& faults);

}  // namespace eplb

#endif  // EPLB_TRANSPORT_H_
