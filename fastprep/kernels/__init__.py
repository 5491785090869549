"""numba kernels only: numpy in, numpy out, no I/O, ``cache=True``; each with a pure-Python twin."""
