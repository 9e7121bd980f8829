// A minimal test harness for the simulator's C++ unit tests: FA_TEST registers a test,
// FA_CHECK records a failure with its location and keeps going, main() runs them all
// (or those whose name contains argv[1]) and exits non-zero if any check failed.
#pragma once

#include <cstdio>
#include <cstring>
#include <functional>
#include <string>
#include <vector>

namespace fastattn::simtest {

struct Test {
  const char* name;
  std::function<void()> fn;
};

inline std::vector<Test>& registry() {
  static std::vector<Test> tests;
  return tests;
}

inline int& failures() {
  static int n = 0;
  return n;
}

struct Register {
  Register(const char* name, std::function<void()> fn) { registry().push_back({name, std::move(fn)}); }
};

inline int run_all(int argc, char** argv) {
  int failed_tests = 0, ran = 0;
  for (const Test& t : registry()) {
    if (argc > 1 && std::strstr(t.name, argv[1]) == nullptr) continue;
    const int before = failures();
    t.fn();
    ++ran;
    const bool ok = failures() == before;
    failed_tests += ok ? 0 : 1;
    std::printf("%s %s\n", ok ? "PASS" : "FAIL", t.name);
    std::fflush(stdout);
  }
  std::printf("%d test(s), %d failed\n", ran, failed_tests);
  return (failed_tests == 0 && ran > 0) ? 0 : 1;
}

}  // namespace fastattn::simtest

#define FA_CONCAT2(a, b) a##b
#define FA_CONCAT(a, b) FA_CONCAT2(a, b)
#define FA_TEST(name)                                                                          \
  static void name();                                                                          \
  static ::fastattn::simtest::Register FA_CONCAT(fa_register_, name)(#name, name);             \
  static void name()

// Reports at most a few failures per check site, so a broken loop does not flood the log.
#define FA_CHECK(cond, ...)                                                                    \
  do {                                                                                         \
    if (!(cond)) {                                                                             \
      static int fa_reported_ = 0;                                                             \
      ++::fastattn::simtest::failures();                                                       \
      if (fa_reported_++ < 5) {                                                                \
        std::printf("  %s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);                \
        std::printf(__VA_ARGS__);                                                              \
        std::printf("\n");                                                                     \
      }                                                                                        \
    }                                                                                          \
  } while (0)
