// The dispatcher handle of a fastgan op, for the C++ autograd formulas: they call the kernels through the
// dispatcher, not directly, so each call is recorded by autograd again (the next order of derivative) and traced
// by torch.compile.
#pragma once

#include <ATen/core/dispatch/Dispatcher.h>

// Defines `const c10::TypedOperatorHandle<SIG>& FN()`, the handle of fastgan::NAME (a string literal), found on
// the first call and kept (the op is registered by then: autograd formulas run after the library loads).
#define FASTGAN_OP_HANDLE(FN, SIG, NAME)                                                                 \
  const c10::TypedOperatorHandle<SIG>& FN() {                                                            \
    static const auto h = c10::Dispatcher::singleton().findSchemaOrThrow("fastgan::" NAME, "").typed<SIG>(); \
    return h;                                                                                             \
  }
