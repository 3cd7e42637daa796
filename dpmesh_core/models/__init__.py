"""DPMesh network components (backbone, head, transformer, VPoser decoder, attention capture)."""
