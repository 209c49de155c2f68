#include "eplb/status.h"

#include <gtest/gtest.h>

#include <memory>

namespace eplb {
namespace {

StatusOr<int> Half(int x) {
  if (x % 2 != 0)
    return InvalidArgumentError("x = " + std::to_string(x) + " is odd");
  return x / 2;
}

StatusOr<int> Quarter(int x) {
  EPLB_ASSIGN_OR_RETURN(int h, Half(x));
  EPLB_ASSIGN_OR_RETURN(int q, Half(h));
  return q;
}

Status CheckEven(int x) {
  EPLB_RETURN_IF_ERROR(Half(x).status());
  return Status::Ok();
}

TEST(StatusTest, OkAndErrors) {
  EXPECT_TRUE(Status::Ok().ok());
  EXPECT_EQ(Status::Ok().ToString(), "OK");
  Status s = DataLossError("checksum mismatch");
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), StatusCode::kDataLoss);
  EXPECT_EQ(s.ToString(), "DATA_LOSS: checksum mismatch");
  EXPECT_EQ(s.WithPrefix("layer 3").message(), "layer 3: checksum mismatch");
}

TEST(StatusTest, StatusOrPropagates) {
  EXPECT_EQ(*Quarter(8), 2);
  StatusOr<int> bad = Quarter(6);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message(), "x = 3 is odd");
  EXPECT_TRUE(CheckEven(4).ok());
  EXPECT_EQ(CheckEven(5).code(), StatusCode::kInvalidArgument);
}

TEST(StatusTest, StatusOrFromOkStatusIsInternalError) {
  StatusOr<int> s = Status::Ok();
  EXPECT_EQ(s.status().code(), StatusCode::kInternal);
}

TEST(StatusTest, MoveOnlyValue) {
  StatusOr<std::unique_ptr<int>> p = std::make_unique<int>(7);
  ASSERT_TRUE(p.ok());
  std::unique_ptr<int> v = std::move(p).value();
  EXPECT_EQ(*v, 7);
}

TEST(StatusDeathTest, ValueOfErrorAborts) {
  StatusOr<int> bad = NotFoundError("nothing");
  EXPECT_DEATH((void)bad.value(), "nothing");
}

TEST(StatusDeathTest, CheckAbortsWithFileAndLine) {
  EXPECT_DEATH(EPLB_CHECK(1 == 2),
               "status_test.cc:[0-9]+: EPLB_CHECK failed: 1 == 2");
}

}  // namespace
}  // namespace eplb
