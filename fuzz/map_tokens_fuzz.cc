// Fuzzes BalancedDispatcher::MapTokens' AVX-512 loop against its scalar loop
// (on a CPU without AVX-512F both are the scalar loop, and only the
// properties of the mapping itself are checked).
//
// Input (binary): byte 0 picks the experts E (1-300), byte 1 the ranks R
// (1-12), byte 2 the slots per rank K (raised to fit E, at most E), byte 3
// how many times the ids repeat (1-16, so that they span many of the vector
// loop's 1024-id blocks) and whether offsets follow (bit 7); then R*K bytes
// of placement (a random-looking placement is made valid: each byte picks an
// expert, then every missing expert replaces a duplicate); E 8-bit token
// counts; with offsets, E 8-bit offsets; the rest are ids (255 -> -1, 254 ->
// E, out of range; else byte % E).
//
// Properties: both loops give the same slots for int32 and int64 ids; every
// id in range lands on a slot of its expert, every other id on -1; and when
// the counts are the ids' own and there are no offsets, every slot receives
// exactly its quota.
#include <algorithm>
#include <cstdint>
#include <vector>

#include "eplb/dispatch.h"
#include "fuzz_check.h"

namespace {

using eplb::fuzz::Check;

uint8_t At(const uint8_t* data, size_t size, size_t i) {
  return i < size ? data[i] : 0;
}

// A placement with every expert present and none twice on a rank, from
// the bytes: rank by rank, each slot takes the byte's expert unless the
// rank has it already, or it is needed elsewhere.
std::vector<int32_t> PlacementOf(const uint8_t* data, size_t size, size_t at,
                                 int e, int r, int k) {
  // Experts in slot order: first every expert once (rotated by the first
  // byte), then the bytes' choices.
  std::vector<int32_t> order;
  order.reserve(static_cast<size_t>(r) * k);
  const int rotate = At(data, size, at) % e;
  for (int x = 0; x < e; ++x) order.push_back((x + rotate) % e);
  for (int p = e; p < r * k; ++p) {
    order.push_back(At(data, size, at + static_cast<size_t>(p)) % e);
  }
  // Deal them onto ranks, skipping a rank that already holds the expert.
  std::vector<int32_t> layer(static_cast<size_t>(r) * k, -1);
  std::vector<int> filled(r, 0);
  int rank = 0;
  for (int32_t x : order) {
    for (int tries = 0; tries < r; ++tries, rank = (rank + 1) % r) {
      if (filled[rank] == k) continue;
      const auto first = layer.begin() + static_cast<ptrdiff_t>(rank) * k;
      if (std::find(first, first + filled[rank], x) != first + filled[rank]) {
        continue;
      }
      layer[static_cast<size_t>(rank) * k + filled[rank]++] = x;
      break;
    }
    rank = (rank + 1) % r;
  }
  // Slots left empty (every rank had the expert): any expert the rank lacks.
  for (int q = 0; q < r; ++q) {
    for (int s = filled[q]; s < k; ++s) {
      const auto first = layer.begin() + static_cast<ptrdiff_t>(q) * k;
      for (int32_t x = 0; x < e; ++x) {
        if (std::find(first, first + s, x) == first + s) {
          layer[static_cast<size_t>(q) * k + s] = x;
          break;
        }
      }
    }
  }
  return layer;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const int e = 1 + (At(data, size, 0) | At(data, size, 1) << 8) % 300;
  const int r = 1 + At(data, size, 2) % 12;
  int k = 1 + At(data, size, 3) % 8;
  k = std::min(std::max(k, (e + r - 1) / r), e);
  const int repeats = 1 + At(data, size, 4) % 16;
  const bool with_offsets = (At(data, size, 4) & 0x80) != 0;
  size_t at = 5;
  const std::vector<int32_t> layer = PlacementOf(data, size, at, e, r, k);
  at += layer.size();
  std::vector<int64_t> counts(e), offsets(e, 0);
  for (int64_t& c : counts) c = At(data, size, at++);
  if (with_offsets) {
    for (int64_t& o : offsets) o = At(data, size, at++);
  }
  std::vector<int32_t> ids;
  for (int rep = 0; rep < repeats; ++rep) {
    for (size_t i = at; i < size; ++i) {
      ids.push_back(data[i] == 255 ? -1 : data[i] == 254 ? e : data[i] % e);
    }
  }
  const std::vector<int64_t> ids64(ids.begin(), ids.end());

  eplb::BalancedDispatcher d(e, r, k);
  d.SetPlacement(layer);
  std::vector<int64_t> quota(layer.size());
  d.ComputeQuotas(counts, quota);
  auto map = [&](bool vector, std::vector<int32_t>& out,
                 std::vector<int64_t>& out64) {
    d.set_vector_mapping(vector);
    out.assign(ids.size(), -7);
    out64.assign(ids.size(), -7);
    if (with_offsets) {
      d.MapTokens(ids, offsets, out);
      d.MapTokens(ids64, offsets, out64);
    } else {
      d.MapTokens(ids, out);
      d.MapTokens(ids64, out64);
    }
  };
  std::vector<int32_t> scalar, vector;
  std::vector<int64_t> scalar64, vector64;
  map(false, scalar, scalar64);
  map(true, vector, vector64);
  Check(vector == scalar, "the vector loop's int32 slots differ");
  Check(vector64 == scalar64, "the vector loop's int64 slots differ");
  Check(std::equal(scalar.begin(), scalar.end(), scalar64.begin()),
        "int32 and int64 ids map differently");

  std::vector<int64_t> received(layer.size(), 0), own(e, 0);
  for (size_t i = 0; i < ids.size(); ++i) {
    const int32_t x = ids[i];
    if (x < 0 || x >= e) {
      Check(scalar[i] == -1, "an id out of range not mapped to -1");
      continue;
    }
    Check(scalar[i] >= 0 && scalar[i] < static_cast<int32_t>(layer.size()) &&
              layer[scalar[i]] == x,
          "an id mapped to a slot without its expert");
    ++received[scalar[i]];
    ++own[x];
  }
  if (!with_offsets && own == counts) {
    Check(received == quota, "a slot did not receive its quota");
  }
  return 0;
}
