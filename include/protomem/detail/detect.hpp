// Compile-time detection of a type's members, for the policy requirement checks in policies/*.hpp:
// is_detected<Op, P> is true when Op<P> names a valid type (the "detection idiom" of the Library
// Fundamentals TS, written out because C++17 lacks std::is_detected). The members every policy
// family shares (a constant name, save/load of its parameters, copies for load's strong
// guarantee) are detected here; each family adds its own.
#pragma once

#include <type_traits>
#include <utility>

#include <protomem/detail/serialize.hpp>

namespace protomem::detail {

template <class Void, template <class...> class Op, class... Args>
struct detector : std::false_type {};
template <template <class...> class Op, class... Args>
struct detector<std::void_t<Op<Args...>>, Op, Args...> : std::true_type {};

/// True when Op<Args...> is a valid type.
template <template <class...> class Op, class... Args>
constexpr bool is_detected = detector<void, Op, Args...>::value;

/// Valid when P::name is a compile-time string (its first character is a constant expression).
template <class P>
using policy_name_t = std::integral_constant<char, P::name[0]>;
/// A policy's name: P::name for a policy class, name() for the memory's holders (policies/any.hpp).
template <class P>
using policy_runtime_name_t = decltype(std::declval<const P&>().name());
template <class P>
const char* name_of(const P& policy) {
  if constexpr (is_detected<policy_runtime_name_t, P>) {
    return policy.name();
  } else {
    (void)policy;
    return P::name;
  }
}
/// Valid when P writes and reads its parameters (the policy's part of a checkpoint).
template <class P>
using policy_save_t = decltype(std::declval<const P&>().save(std::declval<ByteWriter&>()));
template <class P>
using policy_load_t = decltype(std::declval<P&>().load(std::declval<ByteReader&>()));

/// load() builds the new policy as a copy of the current one and moves it in once the whole
/// checkpoint is checked.
template <class P>
constexpr bool policy_is_copyable =
    std::is_copy_constructible<P>::value&& std::is_move_assignable<P>::value;

}  // namespace protomem::detail
