"""
Lattice's plugin package: service descriptors (``lattice.registry.IServiceDescriptor``).

Any installed distribution may add modules to ``lattice/plugins/``; Twisted's
``pluginPackagePaths`` makes every such directory on ``sys.path`` part of this package, and
``twisted.plugin.getPlugins`` finds the descriptors in them.
"""

from twisted.plugin import pluginPackagePaths

__path__.extend(pluginPackagePaths(__name__))
__all__: list[str] = []
