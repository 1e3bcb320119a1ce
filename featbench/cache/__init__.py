"""The HDF5 feature cache — schema version 1, a documented contract.

This package is the only part of featbench that imports h5py. Layout (D = embedding width, C = classes, T = templates)::

    / attrs: featbench_schema=1, featbench_version, model, pretrained, dataset, embed_dim,
             logit_scale (float, already exponentiated: 100 for OpenAI CLIP), fingerprint (sha256 hex),
             preprocess (json), created (ISO-8601 UTC)
    /classnames                  [C] utf-8
    /text/features               [T, C, D] raw text-encoder outputs per template; attr templates (json list)
    /splits/<split>/paths        [N] utf-8, relative to the dataset root: the full split index
    /splits/<split>/labels       [N] int64
    /splits/<split>/features     [M, D] raw image features (test transform) of the rows in `rows`
    /splits/<split>/rows         [M] int64 indices into the split index; absent means all rows (M = N)
    /splits/train/views          [V, K, D] augmented-view features of the train rows in view_rows
    /splits/train/view_rows      [K] int64 indices into the train split index
    /splits/train/views_2 ...    further view sets over the same view_rows (extract --view-scales), each
                                 with attr scale [min, max] (RandomResizedCrop area), as /splits/train/views

Optional, additive (pre-projection features, written by `extract --pre-projection`)::

    /splits/<split>/features_pre [M, P]  /splits/train/views_pre [V, K, P]
    /model/image_projection [P, D] (+ /model/image_projection_bias [D])
    /text/features_pre [T, C, Q]  /model/text_projection [Q, D]

Written by `featbench extract` as well (additive)::

    / attrs: extraction (json: the content-defining arguments — splits, views, view_shots, seeds,
             train_rows, all_views, dtype, pre_projection, hashes of the split index and class names),
             checkpoint_sha256 (local checkpoint files), shard ("rank/world batch B", part files only)
    /skipped                     [S] utf-8 relative paths of unreadable images (--skip-bad-images)
    / attrs: text_tower (json: how prompt learners rebuild the text tower that made the cache — model
             config, weights source, tensor sha256; see featbench.texttower)
    /model/text_tower_state      [P] float32, the text tower's tensors when the weights are random (--pretrained none)

`CacheWriter` builds a cache incrementally in `<name>.h5.partial` (preallocated chunks, per-block done
flags under /_progress, removed at the end) and renames it into place: resumable after `kill -9`.
When unreadable images are dropped, the compacted cache is written to a new `<name>.h5.tmp` and renamed
into place before the (untouched) partial is deleted.

Features are stored raw (not normalised): every head normalises the way its paper does. Readers
return float32 whatever the on-disk dtype. Anyone may write such a file (users bring features from
their own encoders); `Cache` validates the contract on open and names what is missing.

Modules: `_schema` (names, constants, fingerprint, root attributes), `_validate` (the contract, checked),
`_reader` (`Cache`), `_writer` (`write_cache`), `_resume` (`CacheWriter`), `_compact` (dropping bad
rows), `_raw` (verbatim dataset access for `featbench merge`). Import everything from `featbench.cache`.
"""

from featbench.cache._raw import (
    copy_attrs,
    copy_dataset,
    create_along,
    dataset_items,
    group_names,
    open_file,
    read_along,
    write_along,
)
from featbench.cache._reader import Cache, SplitIndex, check_same_encoder
from featbench.cache._resume import BlockTask, CacheWriter, job_differences, read_identity, remove_stale_partial
from featbench.cache._schema import (
    PARTIAL_SUFFIX,
    PROGRESS_GROUP,
    REQUIRED_ATTRS,
    SCHEMA_VERSION,
    SPLITS,
    VIEW_SET_NAMES,
    base_attrs,
    compute_fingerprint,
    default_cache_path,
    partial_path,
    read_strings,
    safe_name,
)
from featbench.cache._validate import REEXTRACT, DtypeRangeError, require_finite, require_fits_dtype, scan_nonfinite
from featbench.cache._writer import expected_bytes, write_array, write_cache, write_strings
from featbench.errors import FingerprintMismatch  # `featbench.extract` names it through this package

__all__ = [
    "BlockTask",
    "Cache",
    "CacheWriter",
    "DtypeRangeError",
    "FingerprintMismatch",
    "PARTIAL_SUFFIX",
    "PROGRESS_GROUP",
    "REEXTRACT",
    "REQUIRED_ATTRS",
    "SCHEMA_VERSION",
    "SPLITS",
    "SplitIndex",
    "VIEW_SET_NAMES",
    "base_attrs",
    "check_same_encoder",
    "compute_fingerprint",
    "copy_attrs",
    "copy_dataset",
    "create_along",
    "dataset_items",
    "default_cache_path",
    "expected_bytes",
    "group_names",
    "job_differences",
    "open_file",
    "partial_path",
    "read_along",
    "read_identity",
    "read_strings",
    "remove_stale_partial",
    "require_finite",
    "require_fits_dtype",
    "safe_name",
    "scan_nonfinite",
    "write_along",
    "write_array",
    "write_cache",
    "write_strings",
]
