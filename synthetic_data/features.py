"""Loading user-supplied exemplar arrays (e.g. Omniglot embeddings) for :class:`BurstyClassification`.

The array has shape ``[classes, exemplars_per_class, dim]``; a 2-D ``[classes, dim]`` array is read
as one exemplar per class. Supported containers: ``.npy``, ``.npz``, ``.h5``/``.hdf5`` and
``.safetensors``; the multi-array containers take the array name ``key``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".npz", ".h5", ".hdf5", ".safetensors")


def load_exemplars(path: str | Path, key: str = "exemplars") -> np.ndarray:
    """Read an exemplar array as float32 ``[classes, exemplars, dim]``.

    Raises ``FileNotFoundError`` / ``ValueError`` / ``KeyError`` with the offending path, suffix,
    key or shape, so a typo in a YAML config fails before training starts.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"exemplars file {str(p)!r} does not exist")
    suffix = p.suffix.lower()
    if suffix == ".npy":
        arr = np.load(p, allow_pickle=False)
    elif suffix == ".npz":
        with np.load(p, allow_pickle=False) as z:
            if key not in z.files:
                raise KeyError(f"exemplars key {key!r} not in {str(p)!r}; available: {sorted(z.files)}")
            arr = z[key]
    elif suffix in (".h5", ".hdf5"):
        import h5py

        with h5py.File(p, "r") as f:
            if key not in f or not isinstance(f[key], h5py.Dataset):
                names: list[str] = []
                f.visititems(lambda n, o: names.append(n) if isinstance(o, h5py.Dataset) else None)
                raise KeyError(f"exemplars key {key!r} is not a dataset in {str(p)!r}; available: {sorted(names)}")
            arr = f[key][()]
    elif suffix == ".safetensors":
        from safetensors.numpy import load_file

        tensors = load_file(str(p))
        if key not in tensors:
            raise KeyError(f"exemplars key {key!r} not in {str(p)!r}; available: {sorted(tensors)}")
        arr = tensors[key]
    else:
        raise ValueError(f"exemplars file {str(p)!r} has unsupported suffix {suffix!r}; valid: {SUFFIXES}")

    arr = np.asarray(arr)
    if not np.issubdtype(arr.dtype, np.number) or np.issubdtype(arr.dtype, np.complexfloating):
        raise ValueError(f"exemplars in {str(p)!r} have non-real dtype {arr.dtype}")
    if arr.ndim == 2:
        arr = arr[:, None, :]
    if arr.ndim != 3 or min(arr.shape) < 1:
        raise ValueError(f"exemplars in {str(p)!r} have shape {arr.shape}; expected [classes, exemplars, dim] (or [classes, dim]) with all sizes >= 1")
    arr = arr.astype(np.float32, copy=False)
    if not np.isfinite(arr).all():
        raise ValueError(f"exemplars in {str(p)!r} contain NaN or inf")
    return arr
