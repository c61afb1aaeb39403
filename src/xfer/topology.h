// Which RDMA NICs a GPU should use: the nearest on the PCIe tree (multi-NIC hosts give each GPU
// the NIC under its own PCIe switch, as NCCL and NIXL do). Read from sysfs, so that it needs
// neither a NIC library nor a GPU here.
#pragma once

#include <string>

#include "common/result.h"

namespace baton::xfer {

// The RDMA devices (sysfs class infiniband) nearest the PCI device `pci_bus_id` ("0000:1b:00.0"),
// as a UCX_NET_DEVICES list of every port ("mlx5_0:1,mlx5_1:1"): those whose PCIe path shares
// the most bridges with it (several at equal distance: all of them). "" where there is none.
std::string nearest_rdma_devices(const std::string& pci_bus_id, const std::string& sysfs = "/sys");

// The PCI bus id of CUDA device `device` ("0000:1b:00.0"), for nearest_rdma_devices.
Result<std::string> cuda_pci_bus_id(int device);

}  // namespace baton::xfer
