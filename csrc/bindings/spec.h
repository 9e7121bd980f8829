// Reading a call's parameter dict: the one calling convention of every native binding
// (fastattn._C, fastattn._cuda, fastattn._cuda_sim).
//
// Each kernel function takes one Python dict of named values (the "spec") that its backend
// module builds; a binding copies the entries into the kernel's parameter struct with the
// helpers below. A missing key, or None, keeps the field's default. Conventions:
//   field      read_fields(spec, "key", p.field, ...): each value converted to its field's type
//              (an int address for a pointer field, the code for an enum); a missing key keeps
//              the struct's default
//   number     get<T>(spec, "key", fallback)
//   address    address<T>(spec, "key"): an int (data_ptr()), nullptr when absent or 0
//   tensor     tensor<N>(spec, "key", strides): a tuple (data_ptr, s0, ..., s{N-1}) with the
//              strides in elements (N = 3 or 4: the layouts the kernels index); nullptr and
//              zero strides when absent
// Keys are string literals: each one's Python str is made once and interned, so a lookup is
// one probe of the dict. A decoding step of a small model reads some forty keys around a
// few microseconds of kernel work; building a str per key per call cost as much as the kernel.
#pragma once

#include <pybind11/pybind11.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <utility>

namespace fastattn::bindings::spec {

namespace py = pybind11;

// The value under `key` in `d`, or nullptr when absent or None (a borrowed reference). Called
// with the GIL held (the interned-name cache is not locked).
inline PyObject* item(const py::dict& d, const char* key) {
  static std::unordered_map<const char*, PyObject*> names;  // by the literal's address
  auto it = names.find(key);
  if (it == names.end()) it = names.emplace(key, PyUnicode_InternFromString(key)).first;
  PyObject* v = PyDict_GetItemWithError(d.ptr(), it->second);
  if (v == nullptr && PyErr_Occurred()) throw py::error_already_set();
  return v == Py_None ? nullptr : v;
}

template <class T>
T get(const py::dict& d, const char* key, T fallback) {
  PyObject* v = item(d, key);
  return v == nullptr ? fallback : py::handle(v).cast<T>();
}

template <class T>
T* address(const py::dict& d, const char* key) {
  return reinterpret_cast<T*>(get<std::uintptr_t>(d, key, 0));
}

template <class F>
void read(const py::dict& d, const char* key, F& field) {
  PyObject* v = item(d, key);
  if (v == nullptr) return;
  if constexpr (std::is_pointer_v<F>)
    field = reinterpret_cast<F>(py::handle(v).cast<std::uintptr_t>());
  else if constexpr (std::is_enum_v<F>)
    field = static_cast<F>(py::handle(v).cast<std::underlying_type_t<F>>());
  else
    field = py::handle(v).cast<F>();
}

// read() of each (key, field) pair in turn.
template <class F, class... Rest>
void read_fields(const py::dict& d, const char* key, F& field, Rest&&... rest) {
  read(d, key, field);
  if constexpr (sizeof...(rest) > 0) read_fields(d, std::forward<Rest>(rest)...);
}

// A strided tensor (see the header comment); its N strides go to `strides`.
template <std::size_t N>
const void* tensor(const py::dict& d, const char* key, int64_t (&strides)[N]) {
  for (auto& s : strides) s = 0;
  PyObject* v = item(d, key);
  if (v == nullptr) return nullptr;
  if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) != static_cast<Py_ssize_t>(N + 1))
    throw py::value_error(std::string(key) + ": expected a tuple (data_ptr, " + std::to_string(N) +
                          " strides in elements)");
  for (std::size_t i = 0; i < N; ++i) strides[i] = py::handle(PyTuple_GET_ITEM(v, i + 1)).cast<int64_t>();
  return reinterpret_cast<const void*>(py::handle(PyTuple_GET_ITEM(v, 0)).cast<std::uintptr_t>());
}

}  // namespace fastattn::bindings::spec
