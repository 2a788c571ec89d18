"""The bases a KAN layer can use; importing this package registers all of them in BASES."""
from .base import BASES, Basis, get_basis_class, register_basis
from .gram import GramBasis
from .chebyshev import ChebyshevBasis
from .legendre import LegendreBasis
from .jacobi import JacobiBasis
from .bernstein import BernsteinBasis
from .bspline import BSplineBasis
from .rbf import RBFBasis
from .wavelet import WAVELETS, WaveletBasis
from .relu import ReLUBasis

__all__ = [
    "BASES", "Basis", "get_basis_class", "register_basis", "GramBasis", "ChebyshevBasis", "LegendreBasis",
    "JacobiBasis", "BernsteinBasis", "BSplineBasis", "RBFBasis", "WaveletBasis", "WAVELETS", "ReLUBasis",
]
