// Building blocks shared by the policies: replica counts, placement, swap
// refinement, minimal redeploy and the lower bound. Pure functions over one
// layer; deterministic (ties go to the lower id). Private to the library.
#ifndef EPLB_SRC_POLICY_ALGORITHMS_H_
#define EPLB_SRC_POLICY_ALGORITHMS_H_

#include <cstdint>
#include <span>
#include <vector>

namespace eplb::policy {

// Replica counts minimising the largest share load[e] / count[e]: start at 1,
// give each further replica to the expert with the largest share below
// `max_count` (lowest id on ties). Optimal for that min-max objective.
// Precondition: E <= num_slots <= E * max_count. O(num_slots log E).
std::vector<int32_t> MinMaxReplicaCounts(std::span<const double> load,
                                         int num_slots, int max_count);

// The ranks (or packs) that still have room, by load: the lightest on top,
// the lowest id on ties. Greedy placements ask for the lightest rank that
// does not hold an expert: SeekTop sets the ones that hold it aside (at most
// its replicas placed so far), so a placement costs O(log R) plus those,
// instead of a scan over every rank.
class RankHeap {
 public:
  // Ranks 0..n-1, all at load 0.
  void Reset(int n);
  bool empty() const { return heap_.empty(); }
  // Pops ranks for which held(rank) is true into the set-aside list until
  // the top is one for which it is false, and returns that rank (it stays
  // on top); -1 when none is left.
  template <typename Held>
  int SeekTop(Held held) {
    first_seen_ = heap_.empty() ? -1 : heap_[0].rank;
    while (!heap_.empty() && held(heap_[0].rank)) {
      aside_.push_back(heap_[0]);
      PopTop();
    }
    return heap_.empty() ? -1 : heap_[0].rank;
  }
  // The top when the last SeekTop began: the lightest rank, held or not.
  int first_seen() const { return first_seen_; }
  // The top (SeekTop's rank) took a replica: its load is now `load`; it
  // stays while it has room, and the set-aside ranks come back.
  void TakeTop(double load, bool has_room);
  // The top rank's load rose to `load` (it stays in the heap).
  void RaiseTop(double load);
  void PopTop();
  void Push(double load, int32_t rank);
  // Puts the set-aside ranks back, all but `except`.
  void Restore(int except = -1);

 private:
  struct Entry {
    double load;
    int32_t rank;
  };
  static bool Lighter(const Entry& a, const Entry& b) {
    return a.load < b.load || (a.load == b.load && a.rank < b.rank);
  }
  void SiftDown(size_t i);
  std::vector<Entry> heap_;
  std::vector<Entry> aside_;
  int first_seen_ = -1;
};

// Greedy longest-processing-time placement: replicas in order of share
// descending (expert id, then replica, ascending on ties), each onto the
// least-loaded rank (lowest id on ties) with a free slot that does not hold
// the expert. Returns [R*K]. Precondition: sum(count) == R*K, count[e] <= R.
// O(R*K * c * log R), c the most replicas of an expert (a heap of ranks).
std::vector<int32_t> PlaceLpt(std::span<const double> load,
                              std::span<const int32_t> count, int num_ranks,
                              int slots_per_rank);

// Pairwise-swap local search on a full layer [R*K]: repeatedly takes the
// most loaded rank and applies the swap of one of its replicas with a
// replica of another rank that most lowers the pair's peak, while the peak
// falls by more than `min_gain` (absolute load). Never co-locates; slots with
// frozen[phy] set do not move. At most `max_swaps` swaps. Returns the number
// of swaps made. O(max_swaps * R * K^2).
int RefineBySwaps(std::span<int32_t> layer, std::span<const double> load,
                  int num_ranks, int slots_per_rank, int max_swaps,
                  double min_gain, std::span<const char> frozen = {});

// A layer planned for balance alone: MinMaxReplicaCounts (capped at R),
// PlaceLpt, then RefineBySwaps until a swap gains less than 1e-9 of the
// mean rank load (at most 64 R swaps). Ranks in planning order (not matched
// to a current layer). Returns [R*K].
std::vector<int32_t> PlanMinMax(std::span<const double> load, int num_ranks,
                                int slots_per_rank);

// Trades the experts of slots a and b (on different ranks) of `layer` [R*K]
// and updates `holds` [R][E] (non-zero where a rank holds an expert) to match.
void SwapSlots(std::span<int32_t> layer, std::span<char> holds, int num_experts,
               int slots_per_rank, int a, int b);

// Relabels the ranks of `plan` [R*K] so that each keeps as many experts of a
// current rank as possible: an exact maximum-overlap assignment of planned
// ranks to current ranks (a shortest-augmenting-path matching on the sparse
// graph of ranks that share an expert; ties to the lower rank). The work
// grows with the shared pairs a row's search visits, not with R^3:
// O(R * K * c * log R) in the usual case, c the replicas an expert has.
void MatchRanksToCurrent(std::span<const int32_t> current,
                         std::span<int32_t> plan, int num_ranks,
                         int slots_per_rank);

// Experts copied onto a rank that did not hold them (spec: moved experts).
int MovedExperts(std::span<const int32_t> current,
                 std::span<const int32_t> plan, int num_ranks,
                 int slots_per_rank);

// A lower bound on the max/mean imbalance of any placement of `load` on R
// ranks of K slots with at most one replica of an expert per rank: the peak
// rank load is at least the mean, and at least the largest share under the
// best possible replica counts (MinMaxReplicaCounts with the cap R). 1.0 for
// an all-zero layer.
double ImbalanceLowerBound(std::span<const double> load, int num_ranks,
                           int slots_per_rank);

}  // namespace eplb::policy

#endif  // EPLB_SRC_POLICY_ALGORITHMS_H_
