"""Ops that move or allocate data (bytes, no FLOPs) and metadata-only ops (neither).

Views and aliases (view, transpose, expand, slice, ...) move nothing: 0 bytes. Copies, concatenation,
gathers, padding and fills read and write their tensors. Allocation without initialisation (empty*)
writes nothing. Random number generation is counted as data written, not as FLOPs.
"""

from __future__ import annotations

import torch

from effml.cost.registry import OpCost, bytes_of, first_tensor, formula, nbytes, tensors, zero_flops

aten = torch.ops.aten

zero_flops((
    "view", "_unsafe_view", "reshape", "_reshape_alias", "t", "transpose", "permute", "expand", "expand_as",
    "unsqueeze", "squeeze", "slice", "select", "as_strided", "detach", "alias", "split", "split_with_sizes",
    "unbind", "chunk", "narrow", "diagonal", "unfold", "view_as_real", "view_as_complex", "movedim",
    "numpy_T", "lift_fresh", "_local_scalar_dense", "sym_size", "sym_stride", "sym_numel", "sym_storage_offset",
    "is_same_size", "is_nonzero", "set_", "resize_", "_resize_output_", "_assert_async", "_assert_scalar",
    "_functional_assert_async", "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided",
    "_has_compatible_shallow_copy_type", "record_stream",
    "unsafe_split", "unsafe_chunk", "split_copy", "_nested_tensor_size",
), category="view", free=True)

zero_flops((
    "clone", "_to_copy", "contiguous", "cat", "stack", "hstack", "vstack", "index", "_unsafe_index",
    "index_select", "gather", "take", "take_along_dim", "constant_pad_nd", "reflection_pad1d",
    "reflection_pad2d", "replication_pad1d", "replication_pad2d", "repeat", "repeat_interleave", "roll",
    "flip", "tril", "triu", "where", "masked_fill", "masked_select", "masked_scatter",
    "slice_scatter", "select_scatter", "diagonal_scatter", "as_strided_scatter",
    "lift_fresh_copy", "alias_copy", "view_copy", "transpose_copy", "permute_copy", "expand_copy",
    "unsqueeze_copy", "squeeze_copy", "t_copy", "nonzero", "pixel_shuffle", "pixel_unshuffle", "col2im",
    "im2col", "upsample_nearest2d", "_upsample_nearest_exact2d", "one_hot",
    # backward of views and gathers: a zero-filled gradient with the incoming one copied into place
    "slice_backward", "select_backward", "index_select_backward", "diagonal_backward", "unfold_backward",
   
), category="memory")


@formula("copy", category="memory")
def _copy(args, kwargs, out):
    dst, src = args[0], args[1]  # reads the source, writes the destination (not read)
    return OpCost(0, 0, bytes_read=bytes_of(src), bytes_written=nbytes(dst))


@formula("fill", "zero", "zeros", "ones", "full", "zeros_like", "ones_like", "full_like", "scalar_tensor",
         "arange", "new_zeros", "new_ones", "new_full", "linspace", "eye", "rand", "randn", "randint",
         "rand_like", "randn_like", "randint_like", "normal", "uniform", "randperm", "bernoulli",
         category="memory")
def _write_only(args, kwargs, out):
    return OpCost(0, 0, bytes_read=0, bytes_written=nbytes(first_tensor(out)))


@formula("index_copy", "index_put", "_unsafe_index_put", "_index_put_impl", "scatter", category="memory")
def _write_into(args, kwargs, out):
    """Writes `source` into part of `self` (e.g. a KV-cache append): reads the source and the index,
    writes as many elements as the source has; the rest of `self` is not touched."""
    src = [t for t in tensors((args[1:], kwargs)) if t.dtype == args[0].dtype]
    idx = [t for t in tensors((args[1:], kwargs)) if t.dtype != args[0].dtype]
    moved = bytes_of(src) if src else 0
    return OpCost(0, 0, bytes_read=moved + bytes_of(idx), bytes_written=moved)


zero_flops(("index_fill",), category="memory")


@formula("scatter_add", "index_add", "scatter_reduce", "index_reduce", category="memory")
def _scatter_accumulate(args, kwargs, out):
    src = [t for t in args[1:] if isinstance(t, torch.Tensor)][-1]  # (self, dim, index, src, ...)
    return OpCost(src.numel())  # one add (or reduce) per source element
