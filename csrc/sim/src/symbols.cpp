// Kernel names for failure messages: the symbol at a kernel's address, demangled.
//
// dladdr() only sees exported symbols, and kernels are usually hidden (-fvisibility=hidden
// in the Python module) or local (test kernels in anonymous namespaces), so the object file's
// own .symtab is read as well. This runs only when a message is printed.
#include <cxxabi.h>
#include <dlfcn.h>
#include <elf.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <vector>

#include "fastattn_sim/runtime.h"

namespace fastattn::sim {

namespace {

std::string demangle(const char* name) {
  int status = 0;
  char* out = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string s = status == 0 && out ? out : name;
  std::free(out);
  return s;
}

// The name of the function symbol at offset `value` in the ELF file `path`, or "".
std::string symtab_lookup(const std::string& path, std::uint64_t value) {
  std::ifstream f(path, std::ios::binary);
  if (!f) return {};
  const std::vector<char> data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  if (data.size() < sizeof(Elf64_Ehdr)) return {};
  Elf64_Ehdr eh;
  std::memcpy(&eh, data.data(), sizeof eh);
  if (std::memcmp(eh.e_ident, ELFMAG, SELFMAG) != 0 || eh.e_ident[EI_CLASS] != ELFCLASS64) return {};
  if (eh.e_shoff == 0 || eh.e_shoff + 1ull * eh.e_shnum * sizeof(Elf64_Shdr) > data.size()) return {};
  std::vector<Elf64_Shdr> sh(eh.e_shnum);
  std::memcpy(sh.data(), data.data() + eh.e_shoff, eh.e_shnum * sizeof(Elf64_Shdr));
  for (const Elf64_Shdr& s : sh) {
    if (s.sh_type != SHT_SYMTAB && s.sh_type != SHT_DYNSYM) continue;
    if (s.sh_link >= sh.size() || s.sh_offset + s.sh_size > data.size()) continue;
    const Elf64_Shdr& strtab = sh[s.sh_link];
    if (strtab.sh_offset + strtab.sh_size > data.size()) continue;
    for (std::uint64_t off = 0; off + sizeof(Elf64_Sym) <= s.sh_size; off += sizeof(Elf64_Sym)) {
      Elf64_Sym sym;
      std::memcpy(&sym, data.data() + s.sh_offset + off, sizeof sym);
      if (ELF64_ST_TYPE(sym.st_info) != STT_FUNC || sym.st_value != value || sym.st_name >= strtab.sh_size) continue;
      return demangle(data.data() + strtab.sh_offset + sym.st_name);
    }
  }
  return {};
}

std::string lookup(const void* fn) {
  char fallback[64];
  std::snprintf(fallback, sizeof fallback, "kernel at %p", fn);
  if (fn == nullptr) return "<unnamed kernel>";
  Dl_info info{};
  if (dladdr(fn, &info) == 0) return fallback;
  if (info.dli_sname != nullptr && info.dli_saddr == fn) return demangle(info.dli_sname);
  // The main program's entry has an empty name.
  const std::string path = info.dli_fname && std::strchr(info.dli_fname, '/') ? info.dli_fname : "/proc/self/exe";
  // Position-independent objects store offsets from their load base; others, addresses.
  std::uint64_t value = reinterpret_cast<std::uintptr_t>(fn);
  {
    std::ifstream f(path, std::ios::binary);
    Elf64_Ehdr eh{};
    if (f.read(reinterpret_cast<char*>(&eh), sizeof eh) && eh.e_type == ET_DYN)
      value -= reinterpret_cast<std::uintptr_t>(info.dli_fbase);
  }
  const std::string name = symtab_lookup(path, value);
  return name.empty() ? fallback : name;
}

}  // namespace

const char* function_name(const void* fn) {
  static std::mutex mutex;
  static std::map<const void*, std::string> cache;  // node-based: the c_str() stays valid
  std::lock_guard<std::mutex> lock(mutex);
  auto it = cache.find(fn);
  if (it == cache.end()) it = cache.emplace(fn, lookup(fn)).first;
  return it->second.c_str();
}

}  // namespace fastattn::sim
