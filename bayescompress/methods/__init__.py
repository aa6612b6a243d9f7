"""Compression methods as plug-ins: one file per method, found by name.

>>> from bayescompress import methods
>>> methods.names()
('gaussian-snr', 'ss-gl', 'ss-ghs', 'turbo-vbi', 'magnitude', 'ssvi', 'sparse-vd')
>>> methods.get("turbo-vbi")(pi0=0.005)
TurboVBI(pi0=0.005)

Adding a method is one new file (a :class:`Method` subclass and its config) and one ``register`` line,
here for the built-in ones or anywhere for your own (docs/design.md).
"""

from bayescompress.methods import registry
from bayescompress.methods.base import (
    Method,
    MethodConfig,
    Trained,
    TrainingContext,
    VariationalConfig,
    VariationalMethod,
    network_kind,
)
from bayescompress.methods.gaussian_snr import GaussianSNR, GaussianSNRConfig
from bayescompress.methods.magnitude import Magnitude, MagnitudeConfig
from bayescompress.methods.registry import get, names, register, unregister
from bayescompress.methods.sparse_vd import SparseVD, SparseVDConfig
from bayescompress.methods.ssvi import SSVI, SSVIConfig
from bayescompress.methods.spike_slab import SpikeSlabConfig, SpikeSlabGHS, SpikeSlabGL, SpikeSlabHorseshoeConfig
from bayescompress.methods.turbo_vbi import TurboVBI, TurboVBIConfig

register(GaussianSNR)
register(SpikeSlabGL)
register(SpikeSlabGHS)
register(TurboVBI)
register(Magnitude)
register(SSVI)
register(SparseVD)

__all__ = ["GaussianSNR", "GaussianSNRConfig", "Magnitude", "MagnitudeConfig", "Method", "MethodConfig",
           "SSVI", "SSVIConfig", "SparseVD", "SparseVDConfig", "SpikeSlabConfig", "SpikeSlabGHS", "SpikeSlabGL", "SpikeSlabHorseshoeConfig", "Trained", "TrainingContext",
           "TurboVBI", "TurboVBIConfig", "VariationalConfig", "VariationalMethod", "get", "names", "network_kind",
           "register", "registry", "unregister"]
