// Boost.Asio's and Beast's compiled parts, built once here. Every file that includes them is
// compiled with BOOST_ASIO_SEPARATE_COMPILATION and BOOST_BEAST_SEPARATE_COMPILATION
// (src/CMakeLists.txt), so it declares those functions instead of compiling them again: about a
// third less compile time for each file that includes server/http.h (http.cpp: 37 -> 24 s).
#include <boost/asio/impl/src.hpp>
#include <boost/beast/src.hpp>
