// Built when UCX is absent: the agent falls back to its TCP path.
#include "xfer/transport.h"

namespace baton::xfer {

Result<std::unique_ptr<RmaTransport>> create_ucx_transport(const UcxOptions&) {
  return make_error("this build has no UCX (run scripts/setup.sh and rebuild)");
}

}  // namespace baton::xfer
