#include "xfer/topology.h"

#include <algorithm>
#include <cctype>
#include <filesystem>
#include <vector>

namespace baton::xfer {

namespace fs = std::filesystem;

namespace {

// The PCIe path of a sysfs device link ("/sys/devices/pci0000:16/0000:16:02.0/0000:1b:00.0"),
// or empty.
std::vector<std::string> pcie_path(const fs::path& link) {
  std::error_code ec;
  const fs::path real = fs::canonical(link, ec);
  if (ec) return {};
  std::vector<std::string> parts;
  for (const auto& p : real) parts.push_back(p.string());
  return parts;
}

}  // namespace

std::string nearest_rdma_devices(const std::string& pci_bus_id, const std::string& sysfs) {
  std::string bdf = pci_bus_id;
  std::transform(bdf.begin(), bdf.end(), bdf.begin(), [](unsigned char c) { return std::tolower(c); });
  if (std::count(bdf.begin(), bdf.end(), ':') == 1) bdf = "0000:" + bdf;  // no PCI domain given
  const std::vector<std::string> gpu = pcie_path(fs::path(sysfs) / "bus/pci/devices" / bdf);
  if (gpu.empty()) return "";
  std::error_code ec;
  std::vector<std::pair<size_t, std::string>> nics;  // (shared path components, device list)
  for (const auto& nic : fs::directory_iterator(fs::path(sysfs) / "class/infiniband", ec)) {
    const std::vector<std::string> path = pcie_path(nic.path() / "device");
    if (path.empty()) continue;
    const size_t shared = std::mismatch(gpu.begin(), gpu.end(), path.begin(), path.end()).first - gpu.begin();
    std::vector<std::string> ports;
    std::error_code pec;
    for (const auto& port : fs::directory_iterator(nic.path() / "ports", pec)) ports.push_back(port.path().filename());
    std::sort(ports.begin(), ports.end());
    std::string list;
    for (const std::string& p : ports) {
      if (!list.empty()) list += ',';
      list.append(nic.path().filename().string()).append(":").append(p);
    }
    if (!list.empty()) nics.emplace_back(shared, list);
  }
  if (nics.empty()) return "";
  std::sort(nics.begin(), nics.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::string out;
  for (const auto& [shared, list] : nics) {
    if (shared != nics.front().first) continue;
    if (!out.empty()) out += ',';
    out += list;
  }
  return out;
}

}  // namespace baton::xfer
