// Built without the CUDA toolkit: no cuda_ipc transport.
#include "xfer/topology.h"
#include "xfer/transport.h"

namespace baton::xfer {

Result<std::unique_ptr<RmaTransport>> create_cuda_ipc_transport() {
  return make_error("this build has no CUDA (cuda_ipc transport unavailable)");
}

}  // namespace baton::xfer

namespace baton::xfer {

Result<std::string> cuda_pci_bus_id(int device) {
  return make_error("CUDA device ", device, ": this build has no CUDA");
}

}  // namespace baton::xfer
