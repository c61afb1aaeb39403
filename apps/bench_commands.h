// baton-bench's subcommands beyond `xfer` (each in its own file).
#pragma once

#include "common/result.h"

namespace baton {

// baton-bench model: prefill, decode and generation speed against the device's limits.
Status model_bench(int argc, char** argv);

}  // namespace baton
