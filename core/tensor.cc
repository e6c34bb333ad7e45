#include "core/tensor.h"

namespace headwise {

std::string Tensor::ShapeString() const {
  std::string s = "[";
  for (int i = 0; i < rank; ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace headwise
