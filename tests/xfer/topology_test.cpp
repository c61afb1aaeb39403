// The NIC each GPU gets (xfer/topology.h), on a made-up sysfs tree: two PCIe switches, a GPU and
// an RDMA NIC under each, and a third NIC on another root complex.
#include "xfer/topology.h"

#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <random>

namespace baton::xfer {
namespace {

namespace fs = std::filesystem;

class FakeSysfs {
 public:
  FakeSysfs() : root_(fs::temp_directory_path() / ("baton-sysfs-" + std::to_string(std::random_device{}()))) {
    fs::create_directories(root_ / "bus/pci/devices");
    fs::create_directories(root_ / "class/infiniband");
  }
  ~FakeSysfs() { fs::remove_all(root_); }
  // A PCI device at devices/<path> (e.g. "pci0000:00/0000:00:01.0/0000:1b:00.0"), listed by bus id.
  void pci(const std::string& path) {
    const fs::path dir = root_ / "devices" / path;
    fs::create_directories(dir);
    fs::create_directory_symlink(dir, root_ / "bus/pci/devices" / dir.filename());
  }
  void nic(const std::string& name, const std::string& path, int ports) {
    pci(path);
    const fs::path dir = root_ / "class/infiniband" / name;
    fs::create_directories(dir / "ports");
    for (int p = 1; p <= ports; ++p) fs::create_directories(dir / "ports" / std::to_string(p));
    fs::create_directory_symlink(root_ / "devices" / path, dir / "device");
  }
  std::string str() const { return root_.string(); }

 private:
  fs::path root_;
};

TEST(TopologyTest, EachGpuGetsTheNicUnderItsSwitch) {
  FakeSysfs s;
  s.pci("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0/0000:1b:00.0");  // GPU 0, switch A
  s.nic("mlx5_0", "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0/0000:1c:00.0", 1);
  s.pci("pci0000:00/0000:00:02.0/0000:21:00.0/0000:22:00.0/0000:2b:00.0");  // GPU 1, switch B
  s.nic("mlx5_1", "pci0000:00/0000:00:02.0/0000:21:00.0/0000:22:01.0/0000:2c:00.0", 2);
  s.nic("mlx5_2", "pci0000:80/0000:80:01.0/0000:81:00.0", 1);  // another root complex
  EXPECT_EQ(nearest_rdma_devices("0000:1b:00.0", s.str()), "mlx5_0:1");
  EXPECT_EQ(nearest_rdma_devices("0000:2B:00.0", s.str()), "mlx5_1:1,mlx5_1:2");  // CUDA's upper case
  EXPECT_EQ(nearest_rdma_devices("2b:00.0", s.str()), "mlx5_1:1,mlx5_1:2");        // no PCI domain
  EXPECT_EQ(nearest_rdma_devices("0000:99:00.0", s.str()), "");                    // no such device
}

TEST(TopologyTest, NicsAtEqualDistanceAreAllTaken) {
  FakeSysfs s;
  s.pci("pci0000:00/0000:00:01.0/0000:1b:00.0");
  s.nic("mlx5_1", "pci0000:00/0000:00:02.0/0000:2c:00.0", 1);
  s.nic("mlx5_0", "pci0000:00/0000:00:03.0/0000:3c:00.0", 1);
  EXPECT_EQ(nearest_rdma_devices("0000:1b:00.0", s.str()), "mlx5_0:1,mlx5_1:1");
}

TEST(TopologyTest, NoRdmaDevicesIsEmpty) {
  FakeSysfs s;
  s.pci("pci0000:00/0000:00:01.0/0000:1b:00.0");
  EXPECT_EQ(nearest_rdma_devices("0000:1b:00.0", s.str()), "");
  EXPECT_EQ(nearest_rdma_devices("0000:1b:00.0", s.str() + "/nowhere"), "");
}

}  // namespace
}  // namespace baton::xfer
