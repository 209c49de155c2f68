// eplb over MPI: one process per rank, as an engine runs them.
//
// MpiJob initialises MPI for the process (MPI_THREAD_MULTIPLE: the serving
// thread makes the collective calls while the transport's thread moves
// weights), and gives the two halves of the seam the library needs from a
// multi-process job:
//   - collective(): the Collective over every process (MPI_Iallreduce on a
//     communicator of its own, each call bounded by a timeout, so a rank
//     that stops answering becomes an error rather than a hang);
//   - CreateTransport(): point-to-point weight transfers (MPI_Isend /
//     MPI_Irecv on another communicator) on a background thread, in bounded
//     chunks: at most max_in_flight messages of at most chunk_bytes posted
//     at once per process. Each transfer's sender computes the checksum of
//     the expert it reads while the expert's data is in flight, and sends
//     it after the data; the receiver reads each chunk back as it lands
//     (TransferBatch::landed_checksum). With one_sided (the default), the
//     sender writes every other chunk straight into the receiver's staging
//     buffer (MPI_Put through a dynamic window) instead of sending it.
// Built when CMake finds MPI (EPLB_MPI); the library itself does not need
// MPI. Multi-node is the same program under `mpirun -H host1,host2 ...`.
#ifndef EPLB_MPI_H_
#define EPLB_MPI_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "eplb/collective.h"
#include "eplb/status.h"
#include "eplb/transport.h"

namespace eplb {

struct MpiTransportOptions {
  int max_in_flight = 16;  // Messages posted at once, >= 1.
  // Largest message: a multiple of kChecksumBlockBytes (4096), so that the
  // receiver reads back each chunk's checksum as it lands.
  int64_t chunk_bytes = 4 << 20;
  // Every other chunk a process sends to one peer in a batch (the 2nd,
  // 4th, ... of all the batch's chunks between the two) is written by the
  // sender with MPI_Put into the receiver's staging buffer, then announced
  // by an empty message in its place; the others are sent. Within one node
  // MPI copies a sent message on the receiver's core (single-copy shared
  // memory reads the sender's pages) and a put on the sender's, so the
  // copying is split over both processes and the receiver's core keeps time
  // to read back what landed. The receiver attaches each staging buffer it
  // receives into to a dynamic window (MPI_Win_create_dynamic, created with
  // the transport) and sends each sender the addresses of the batch's
  // staging buffers once per batch.
  // When this MPI cannot create the window on every process, the transport
  // sends every chunk (MpiJob::one_sided() says which).
  bool one_sided = true;
};

class MpiJob {
 public:
  // Initialises MPI (once per process). FailedPrecondition when MPI cannot
  // give MPI_THREAD_MULTIPLE or was initialised already.
  static StatusOr<std::unique_ptr<MpiJob>> Init(int* argc, char*** argv);
  // Finalises MPI. Transports it created must be gone by then.
  ~MpiJob();
  MpiJob(const MpiJob&) = delete;
  MpiJob& operator=(const MpiJob&) = delete;

  int rank() const { return rank_; }
  int size() const { return size_; }
  // Valid while the job lives. A call that takes longer than
  // collective_timeout_nanos fails with DeadlineExceeded.
  Collective& collective();
  void set_collective_timeout_nanos(int64_t nanos);
  // Collective: every process of the job calls it, with the same options.
  // The transport's window (one_sided) is freed when it is destroyed, a
  // collective call too: destroy transports on every process.
  StatusOr<std::unique_ptr<Transport>> CreateTransport(
      const MpiTransportOptions& options);
  // Whether the transport created last writes chunks one-sided: false when
  // it was not asked to, or this MPI could not create its window.
  bool one_sided() const { return one_sided_; }
  // Bytes this process wrote one-sided (MPI_Put) through every transport
  // it created.
  int64_t one_sided_bytes() const { return put_bytes_->load(); }
  // After a collective call failed because a process stopped answering:
  // every surviving process calls it. Each sends a heartbeat to every other
  // process of the job and waits for theirs until `timeout_nanos`; those
  // that answered form a new communicator (MPI_Comm_create_group), over
  // which the collective continues (rank() and size() change). Returns the
  // survivors' indices among the processes before, ascending. Transports
  // created before must be destroyed first (their communicator includes the
  // lost process); CreateTransport() then spans the survivors.
  // Unavailable when the survivors do not agree on who survived.
  StatusOr<std::vector<int>> Recover(int64_t timeout_nanos);
  // The host name of this process (for logs).
  const char* processor_name() const { return processor_name_; }

 private:
  MpiJob() = default;
  class MpiCollective;
  int rank_ = 0;
  int epoch_ = 0;  // Recoveries so far.
  int size_ = 1;
  bool one_sided_ = false;
  std::shared_ptr<std::atomic<int64_t>> put_bytes_ =
      std::make_shared<std::atomic<int64_t>>(0);
  char processor_name_[256] = {};
  std::unique_ptr<MpiCollective> collective_;
};

}  // namespace eplb

#endif  // EPLB_MPI_H_
