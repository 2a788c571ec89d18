"""The ways of running a KAN layer fast; what a layer computes is the core's and the bases' (kan_zoo.layers).

Each path computes what the core's plain ops compute, the reference, which the tests compare it with. The core
calls one dispatch point, :mod:`.dispatch`: ``expand_conv(layer, x, u)`` for a separable basis and
``non_separable_branch(layer, t)`` for the wavelet. Each takes the first row below that applies; inside a row, the
basis work takes the first of its lettered rows that applies (row 3 uses row 4's). "Eager": outside torch.compile,
export tracing and torch.jit.trace (the legacy ONNX exporter: it records only ops it sees, so it gets rows 5-6), on
real tensors (not meta). A PEFT adapter (kan_zoo.peft) adds its own term to whichever row ran.

path (module)             device; dtype          bases                  compile / export        switch; other
------------------------  ---------------------  ---------------------  ----------------------  ------------------------
separable bases: dispatch.expand_conv
1 the eager node, called  CPU                    separable              compiling a graph, not  the eager-node switch
  from a compiled graph                                                 exporting: rows 2-6     (*) is True
                                                                        eagerly, behind a
                                                                        graph break
2 Triton kernels          CUDA (capability 7.0,  gram, chebyshev,       eager; autocast too     TRITON; triton
  (triton_basis,          bfloat16 8.0), or CPU  legendre, jacobi,      (the stack in its       importable; numeric
  _triton_kernels,        with                   bernstein, rbf;        dtype)                  padding
  _triton_relu_kernels)   TRITON_INTERPRET=1;    bspline, relu (CUDA:
                          float32, float16,      KAN_ZOO_TRITON=all);
                          bfloat16; contiguous   base branch silu,
                                                 identity or gelu
3 in-place expansion      any                    separable              eager, no autocast      no gradient needed
  without autograd
  (conv_expanded): by 4a
  or 4b
4 fused autograd node     any                    separable              eager, no autocast      numeric padding (not an
  (fused)                                                                                       asymmetric 'same');
                                                                                                memory_efficient: the
                                                                                                stack rebuilt in
                                                                                                backward
  a C kernels             CPU; float32, float64  bspline (degree >=     eager                   NATIVE_KERNELS; a C
    (native_ops,                                 1), rbf, relu                                  compiler
    native_kernels,
    csrc/)
  b the basis's own       any (CPU: a piece of   separable              eager                   -
    in-place ops          the batch at a time)
    (Basis.expand_into,
    expand_backward)
5 plain ops,              any                    separable              any, where 3-4 do not   memory_efficient; a
  checkpointed                                                          apply                   gradient needed
6 plain ops               any                    separable              any; compiling a        -
  (expand_conv_plain)                                                   graph: the constant
                                                                        function in closed
                                                                        form; export: as is
  a C kernels as custom   CPU; float32, float64  bspline (degree >=     compiling a graph, not  NATIVE_KERNELS; built
    ops (native_ops)                             1), rbf, relu          exporting
  b the basis's expand    any                    separable              any                     -
wavelet: dispatch.non_separable_branch
7 chunked node            any                    wavelet                eager, autocast too;    numeric padding;
  (fused_wavelet)                                                       compiling a graph:      compiling: the
                                                                        called outside it; not  eager-node switch (*) is
                                                                        export                  not False
  a C chunk kernels       CPU; float32,          mexican_hat, dog       eager                   NATIVE_KERNELS; a C
    (csrc/wavelet.c)      float64, the                                                          compiler
                          parameters in t's
                          dtype
  b compiled chunk        CPU; float32, float64  mexican_hat, morlet,   eager                   CPU_KERNELS (off by
    kernels                                      dog                                            default); a C++ compiler
    (cpu_kernels)
  c eager chunk ops       any                    wavelet (meyer,        eager                   -
                                                 shannon: autograd per
                                                 chunk)
8 plain ops,              any                    wavelet                any, where 7 does not   memory_efficient; grad
  checkpointed                                                          apply                   enabled
9 plain ops               any                    wavelet                any                     -
  (basis.convolve)

(*) The eager-node switch: the class attribute KANConvNd.compile_calls_eager_node (None by default, False on the
bottleneck layers). NATIVE_KERNELS, CPU_KERNELS, TRITON: the switches of :mod:`.switches`, set by kan_zoo.layers'
set_native_kernels_enabled, set_cpu_kernels_enabled and set_triton_enabled, or at import by
KAN_ZOO_NATIVE_KERNELS=0, KAN_ZOO_CPU_KERNELS=1 and KAN_ZOO_TRITON=0. Numeric padding: symmetric in every
dimension (all but a 'same' padding of odd total). Rows 2, 4 and 7 run their own backward (4 by its lettered
rows); asked for create_graph=True, they replay the plain ops.

Imports run one way. The core imports :mod:`.dispatch`; the kernel modules import the bases (the classes, and the
constants a basis shares with its kernel), kan_zoo.layers.helpers and kan_zoo.layers.constant_function, never the
core: what they need of a layer is the layer, passed in. The bases import only :mod:`.native_kernels` and
:mod:`.native_ops` (and so run this file, which imports nothing).
"""
