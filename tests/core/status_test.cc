// Status: the field at fault travels with the error through context and StatusOr.
#include "core/status.h"

#include <catch2/catch.hpp>

namespace headwise {
namespace {

StatusOr<int> Fails() {
  return InvalidArgument("max_tokens must be >= 1, got 0").WithField("max_tokens");
}

TEST_CASE("a status names the field at fault, through context and StatusOr", "[core]") {
  const Status bare = InvalidArgument("the prompt is empty");
  CHECK(bare.field().empty());

  const Status s = InvalidArgument("top_p must be in (0, 1], got 2").WithField("top_p");
  CHECK(s.field() == "top_p");
  CHECK(s.code() == StatusCode::kInvalidArgument);
  CHECK(s.message() == "top_p must be in (0, 1], got 2");
  CHECK(s.ToString() == "invalid argument: top_p must be in (0, 1], got 2");

  const Status wrapped = s.WithContext("request 7");
  CHECK(wrapped.field() == "top_p");
  CHECK(wrapped.message() == "request 7: top_p must be in (0, 1], got 2");

  const StatusOr<int> failed = Fails();
  REQUIRE_FALSE(failed.ok());
  CHECK(failed.status().field() == "max_tokens");

  // OK has no field to name.
  CHECK(Status::Ok().WithField("anything").field().empty());
  CHECK(Status::Ok().WithField("anything").ok());
}

}  // namespace
}  // namespace headwise
