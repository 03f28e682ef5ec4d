from twisted.application.service import ServiceMaker

lattice = ServiceMaker(
    "Lattice", "lattice.tap", "A self-hosted mesh node (KV, discovery, services, USB).", "lattice"
)
